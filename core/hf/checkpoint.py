"""Hugging Face checkpoints in and out: ``save_pretrained`` for compressed models, and the loader back.

:func:`save_pretrained` bakes pruning masks, writes the (already updated) config and, when every
tensor has the shape the config builds, a plain ``model.safetensors`` that
``AutoModel.from_pretrained`` loads with identical outputs: magnitude-pruned models and channel-pruned
models whose blocks share one MLP width (and, for q/k/v/o layouts such as Llama and ViT, one head count).
Anything else (low-rank factors, per-block widths, pruned heads of BERT/GPT-2 layouts) is written in
torchslim's format under ``torchslim/`` next to ``config.json``, and :func:`from_pretrained` rebuilds
it: the base model from the config, then :func:`torchslim.load` replays the recorded structure.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import masks
from ..errors import ModelError, SaveLoadError
from ..surgery import private_copy
from .blocks import find_blocks, sync_attributes

log = logging.getLogger("torchslim")

#: Sub-directory holding torchslim's own save when the config cannot describe the model.
TORCHSLIM_DIR = "torchslim"
#: Marker file naming the model class, for :func:`from_pretrained`.
MARKER = "torchslim_hf.json"


@dataclass
class Saved:
    """What :func:`save_pretrained` wrote: ``plain`` is True when ``from_pretrained`` loads it as is."""

    directory: Path
    plain: bool
    reasons: list[str] = field(default_factory=list)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(f"torchslim.hf needs transformers ({exc}); pip install 'torchslim[hf]'") from None
    return transformers


def _unwrap(model_or_result: Any) -> nn.Module:
    # a RunResult/StepResult carries .model; so does LlamaForCausalLM (its inner LlamaModel)
    model = model_or_result if isinstance(model_or_result, nn.Module) else getattr(model_or_result, "model", None)
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None), "to_dict"):
        raise ModelError(f"torchslim.hf.save_pretrained needs a transformers PreTrainedModel (with .config), got "
                         f"{type(model).__name__}; use torchslim.save for other models")
    return model


def mismatches(model: nn.Module) -> list[str]:
    """Tensors whose shape differs from what ``type(model)(model.config)`` builds (empty: config says it all)."""
    with torch.device("meta"):
        reference = type(model)(copy.deepcopy(model.config))
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = [f"{k}: saved {have[k]}, config builds {want[k]}" for k in have if k in want and have[k] != want[k]]
    found += [f"{k}: not built by the config (a structural change such as low-rank factors)"
              for k in have if k not in want]
    found += [f"{k}: built by the config but missing (a structural change)" for k in want if k not in have]
    return found


def save_pretrained(model_or_result: Any, directory: str | os.PathLike, *, require_plain: bool = False,
                    **kwargs: Any) -> Saved:
    """Write a compressed transformers model to ``directory``; returns whether plain ``from_pretrained`` loads it.

    Masks are baked into the weights of a copy (the model is not changed). ``require_plain=True``
    raises :class:`ModelError`, before writing, when the config cannot describe the model. Extra
    keyword arguments go to the model's own ``save_pretrained``.
    """
    model = private_copy(_unwrap(model_or_result))  # finalizing must not reach the caller's classes
    masks.finalize(model)
    reasons = mismatches(model)
    if reasons and require_plain:
        raise ModelError(f"save_pretrained: the config cannot describe this model ({reasons[0]}"
                         f"{f'; and {len(reasons) - 1} more' if len(reasons) > 1 else ''}); plain "
                         f"from_pretrained cannot load it. Save without require_plain and reload with "
                         f"torchslim.hf.from_pretrained")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "model.safetensors.index.json", MARKER):
        if (target / stale).exists():
            (target / stale).unlink()
    if (target / TORCHSLIM_DIR).exists():
        shutil.rmtree(target / TORCHSLIM_DIR)
    if not reasons:
        model.save_pretrained(str(target), **kwargs)
        return Saved(target, True)
    from ..io import save

    model.config.save_pretrained(str(target))
    save(model, target / TORCHSLIM_DIR)
    cls = type(model)
    (target / MARKER).write_text(json.dumps({"class": f"{cls.__module__}.{cls.__qualname__}",
                                             "architecture": cls.__name__, "reasons": reasons[:20]}, indent=2))
    log.warning("save_pretrained: %s holds changes its config cannot describe (%s); reload it with "
                "torchslim.hf.from_pretrained(%r)", target, reasons[0], str(target))
    return Saved(target, False, reasons)


def _model_class(directory: Path, config: Any) -> type:
    transformers = _transformers()
    marker = directory / MARKER
    if marker.exists():
        name = json.loads(marker.read_text())["architecture"]
    else:
        name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise SaveLoadError(f"{directory}: cannot tell the model class (architectures={name!r} is not a "
                            f"transformers class); pass model_class=... to torchslim.hf.from_pretrained")
    return cls


def from_pretrained(directory: str | os.PathLike, *, model_class: type | None = None) -> nn.Module:
    """Load what :func:`save_pretrained` wrote: plain checkpoints through ``from_pretrained``, the rest
    rebuilt on the config's model by :func:`torchslim.load`. Local directories only; nothing is downloaded."""
    transformers = _transformers()
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise SaveLoadError(f"{path} has no config.json; give the directory save_pretrained wrote")
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    cls = model_class or _model_class(path, config)
    if not (path / TORCHSLIM_DIR).is_dir():
        return cls.from_pretrained(str(path), local_files_only=True)
    from ..io import load

    model = load(path / TORCHSLIM_DIR, base_model=cls(config))
    for block in find_blocks(model):
        sync_attributes(model, block)
    return model.eval()
