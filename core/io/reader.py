"""Reading a model: :func:`load` verifies every file, replays the edits on a copy of the base model, loads weights."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import SaveLoadError, TorchslimError
from ..registry import PluginRegistry, module_kind_name
from ..surgery import own_parametrized_classes
from .atomic import OLD_TAG
from .encoding import decode_all
from .manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest, read, verify_files
from .structure import register_masks, replay


@functools.lru_cache(maxsize=1)
def default_registry() -> PluginRegistry:
    """The plugin registry :func:`load` consults for module kinds when given none (discovered once)."""
    return PluginRegistry()


def _known_kinds(manifest: Manifest, registry: PluginRegistry | None) -> dict[str, type]:
    if not manifest.modules:
        return {}  # nothing to rebuild: no need to discover plugins
    # every module kind, built-in or not, comes from a plugin's register_module_kinds hook
    known = dict((registry if registry is not None else default_registry()).module_kinds)
    for rec in manifest.modules:
        if rec.kind not in known:
            hint = f" (pip install {rec.distribution})" if rec.distribution else ""
            raise SaveLoadError(
                f"module {rec.path!r} of the saved model is of kind {rec.kind!r}, which no installed plugin "
                f"registers. Install the plugin that provides it{hint}: it must register the kind through "
                f"the register_module_kinds hook (or pass load(..., registry=...) with that plugin registered)."
            )
    return known


def _check_fits(model: nn.Module, tensors: dict[str, torch.Tensor], manifest: Manifest,
                base_model: nn.Module) -> None:
    have = model.state_dict()
    problems = []
    for key, tensor in tensors.items():
        if key not in have:
            problems.append(f"{key!r} is in the saved model but not in the base model")
        elif tuple(have[key].shape) != tuple(tensor.shape):
            problems.append(f"{key!r} has shape {list(tensor.shape)} in the saved model but "
                            f"{list(have[key].shape)} in the base model")
    problems += [f"{key!r} is in the base model but not in the saved model" for key in have if key not in tensors]
    if problems:
        base = module_kind_name(type(base_model))
        origin = "" if base == manifest.model_class else f" (saved from {manifest.model_class}, base is {base})"
        raise SaveLoadError(
            f"the saved model does not fit the base model{origin}: first mismatching key {problems[0]}"
            f"{f'; {len(problems)} keys differ in all' if len(problems) > 1 else ''}. Build base_model "
            f"exactly as the model was built before compression (same class and constructor arguments)."
        )


def _match_dtypes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give each tensor of ``model`` the saved dtype (a rebuilt module starts as float32)."""
    live = model.state_dict(keep_vars=True)
    for key, tensor in tensors.items():
        target = live[key]
        if target.dtype != tensor.dtype:
            target.data = target.data.to(tensor.dtype)


def read_manifest(directory: Path) -> Manifest:
    if not directory.exists():
        backups = sorted(directory.parent.glob(f".{directory.name}.{OLD_TAG}-*"))
        if backups:
            raise SaveLoadError(f"{directory} does not exist, but {backups[-1]} holds the previous save of an "
                                f"interrupted save; rename it to {directory.name} to use it")
    return read(directory)


def _artifact(directory: Path, manifest: Manifest, registry: PluginRegistry | None) -> nn.Module | None:
    """The deployed model saved in ``directory`` (a root module of a kind carrying files), else None."""
    root = next((rec for rec in manifest.modules if rec.path == ""), None)
    if root is None:
        return None
    cls = _known_kinds(manifest, registry)[root.kind]
    rebuild = getattr(cls, "from_torchslim_artifact", None)
    if not callable(rebuild):
        return None
    try:
        return rebuild(root.spec or {}, directory)
    except TorchslimError:
        raise
    except Exception as exc:
        raise SaveLoadError(f"the {root.kind} artifact in {directory} cannot be loaded: "
                            f"{type(exc).__name__}: {exc}") from exc


def load(directory: str | os.PathLike, base_model: nn.Module | None = None, *,
         registry: PluginRegistry | None = None) -> nn.Module:
    """Rebuild the model saved in ``directory`` on a copy of ``base_model``; ``base_model`` is not changed.

    ``base_model`` is the model as built before compression (same class and constructor arguments;
    its weights do not matter). The manifest and every file are verified first; then registered
    module kinds are rebuilt, changed standard layers re-created, masks re-registered and the
    weights loaded strictly. ``registry`` supplies plugin module kinds (default: the installed
    plugins, discovered once). Raises :class:`SaveLoadError` naming the file, module or key at fault.
    Nothing is unpickled. A deployed model (a ``deploy`` step's runtime artifact) needs no base model:
    its files are verified and the runtime module is rebuilt from them.
    """
    directory = Path(directory)
    if base_model is None:
        manifest = read_manifest(directory)
        verify_files(directory, manifest)
        artifact = _artifact(directory, manifest, registry)
        if artifact is not None:
            return artifact
        raise SaveLoadError(f"{directory} holds a {manifest.model_class} model, which is rebuilt on a base model: "
                            f"pass base_model= built as before compression")
    if not isinstance(base_model, nn.Module):
        raise SaveLoadError(f"base_model must be an nn.Module built as before compression, got "
                            f"{type(base_model).__name__}")
    manifest = read_manifest(directory)
    if WEIGHTS_FILE not in manifest.files:
        raise SaveLoadError(f"{directory / MANIFEST_FILE} does not list {WEIGHTS_FILE}")
    verify_files(directory, manifest)
    artifact = _artifact(directory, manifest, registry)
    if artifact is not None:  # a deployed model holds its weights in its artifact: the base model is not used
        return artifact
    kinds = _known_kinds(manifest, registry)
    try:
        stored = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaveLoadError(f"{directory / WEIGHTS_FILE} cannot be read as safetensors: {exc}") from None
    tensors = decode_all(manifest, stored)
    model = own_parametrized_classes(copy.deepcopy(base_model))  # every change below happens on the copy
    try:
        model = replay(model, manifest, kinds)
        register_masks(model, manifest)
        _check_fits(model, tensors, manifest, base_model)
        _match_dtypes(model, tensors)
        model.load_state_dict(tensors, strict=True)
    except TorchslimError as exc:
        raise SaveLoadError(_with_origin(str(exc), manifest, base_model)) from exc
    except Exception as exc:
        raise SaveLoadError(_with_origin(f"loading {directory} into {type(base_model).__name__} failed: "
                                         f"{type(exc).__name__}: {exc}", manifest, base_model)) from exc
    return model


def _with_origin(message: str, manifest: Manifest, base_model: nn.Module) -> str:
    """``message`` plus the class the model was saved from, and the base model's, when it lacks them."""
    if "saved from" in message:
        return message
    base = module_kind_name(type(base_model))
    same = "the same class" if base == manifest.model_class else f"base_model is {base}"
    return f"{message} (the model was saved from {manifest.model_class}; {same})"
