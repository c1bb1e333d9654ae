"""Writing a model: :func:`save` (atomic) and :func:`saved_size_bytes` (the bytes it would write)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SaveLoadError, TorchslimError
from ..registry import module_kind_name
from ..version import __version__
from .atomic import atomic_directory, fsync_file
from .encoding import encode_state, stored_tensors
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    FileEntry,
    Manifest,
    file_sha256,
    jsonable,
    render,
)
from .structure import record_parameters, record_structure


def _unpack(result_or_model: Any, recipe: Any, metrics: Any) -> tuple[nn.Module, Any, Any]:
    if isinstance(result_or_model, nn.Module):
        return result_or_model, recipe, metrics
    model = getattr(result_or_model, "model", None)
    if not isinstance(model, nn.Module):
        raise SaveLoadError(f"save() takes a torchslim RunResult or an nn.Module, got "
                            f"{type(result_or_model).__name__}")
    if recipe is None:
        recipe = getattr(result_or_model, "recipe", None)
    if metrics is None:
        metrics = getattr(result_or_model, "metrics", None)
    return model, recipe, metrics


def _write_into(directory: Path, model: nn.Module, recipe: Any, metrics: Any, *, durable: bool) -> None:
    """Write ``model.safetensors`` and ``manifest.json`` into the existing empty ``directory``."""
    encoded, mask_records = encode_state(model)
    modules, layers = record_structure(model)
    parameters = record_parameters(model)
    entries, stored = stored_tensors(encoded)
    weights = directory / WEIGHTS_FILE
    # one metadata key: safetensors writes several in random order, and saves should be reproducible
    save_file(stored, str(weights), metadata={"format": f"{FORMAT}-{FORMAT_VERSION}"})
    if durable:
        fsync_file(weights)
    manifest = Manifest(
        torchslim_version=__version__,
        torch_version=torch.__version__.split("+")[0],
        model_class=module_kind_name(parametrize.type_before_parametrizations(model)),
        recipe=None if recipe is None else jsonable(recipe, "recipe"),
        metrics=None if metrics is None else jsonable(metrics, "metrics"),
        modules=modules, layers=layers, parameters=parameters, masks=mask_records, tensors=entries,
        files={WEIGHTS_FILE: FileEntry(bytes=weights.stat().st_size, sha256=file_sha256(weights))},
    )
    manifest.files.update(_write_artifact(directory, model, durable))
    path = directory / MANIFEST_FILE
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(manifest))
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _write_artifact(directory: Path, model: nn.Module, durable: bool) -> dict[str, FileEntry]:
    """Write a runtime artifact's files (a deployed model, see :mod:`torchslim.runtime`); their entries."""
    artifact = getattr(model, "torchslim_artifact", None)
    if not callable(artifact):
        return {}
    entries = {}
    for name, data in artifact().items():
        if Path(name).name != name or name in (MANIFEST_FILE, WEIGHTS_FILE, "", ".", ".."):
            raise SaveLoadError(f"{type(model).__name__} names an artifact file {name!r}; use a plain file name "
                                f"other than {MANIFEST_FILE} and {WEIGHTS_FILE}")
        path = directory / name
        path.write_bytes(data)
        if durable:
            fsync_file(path)
        entries[name] = FileEntry(bytes=path.stat().st_size, sha256=file_sha256(path))
    return entries


def save(result_or_model: Any, directory: str | os.PathLike, *, recipe: Any = None, metrics: Any = None) -> Path:
    """Save a compressed model (or a :class:`~torchslim.RunResult`) into ``directory``; returns its path.

    Writes ``model.safetensors`` and ``manifest.json``, plus a deployed model's artifact files (an ONNX
    file, a TorchScript archive, ...; see :mod:`torchslim.runtime`). From a RunResult the model, recipe and metrics
    are taken (``recipe``/``metrics`` given here win). The write is atomic: files go to a temporary
    sibling directory, are fsynced, and replace ``directory`` in one rename, so a crash leaves the
    previous contents intact. ``directory`` must be new, empty, or an earlier torchslim save.
    The model is not changed.
    """
    model, recipe, metrics = _unpack(result_or_model, recipe, metrics)
    target = Path(directory)
    if target.is_symlink():  # replace what the link points to, not the link
        target = target.resolve()
    try:
        with atomic_directory(target) as scratch:
            _write_into(scratch, model, recipe, metrics, durable=True)
    except TorchslimError:
        raise
    except Exception as exc:
        raise SaveLoadError(f"saving to {target} failed ({type(exc).__name__}: {exc}); "
                            f"its previous contents are unchanged") from exc
    return target


def saved_size_bytes(model: Any) -> int:
    """Bytes :func:`save` writes for ``model`` (weights, manifest, a deployed model's artifact), measured in a temporary directory."""
    model, recipe, metrics = _unpack(model, None, None)
    with tempfile.TemporaryDirectory(prefix="torchslim-size-") as scratch:
        _write_into(Path(scratch), model, recipe, metrics, durable=False)
        return sum(p.stat().st_size for p in Path(scratch).iterdir())
