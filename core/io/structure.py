"""Structural edits, recorded on save and replayed on load.

Every module of a registered kind is stored as its ``torchslim_spec()`` and rebuilt with
``from_torchslim_spec``; every standard layer is stored with its constructor arguments and re-created
when the base model's layer differs; plain parameters of user modules are stored with their shapes.
Only registered kinds and the standard layers are ever constructed, so a manifest cannot run code.
"""

from __future__ import annotations

import functools
from importlib import metadata

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import masks
from ..errors import ModelError, SaveLoadError
from ..registry import module_kind_name
from ..surgery import is_module_kind, model_device, replace_submodule
from .layers import LAYER_BY_NAME, STANDARD_LAYERS, layer_args
from .manifest import LayerRecord, Manifest, ModuleRecord, ParameterRecord, jsonable


@functools.lru_cache(maxsize=1)
def _package_owners() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def distribution_of(cls: type) -> str | None:
    owners = _package_owners().get(cls.__module__.split(".")[0])
    return owners[0] if owners else None


def _inside(path: str, prefixes: list[str]) -> bool:
    return any(path != p and (p == "" or path.startswith(p + ".")) for p in prefixes)


def record_structure(model: nn.Module) -> tuple[list[ModuleRecord], list[LayerRecord]]:
    """Registered-kind modules (outermost only) and standard layers, each with what rebuilds it."""
    modules: list[ModuleRecord] = []
    layers: list[LayerRecord] = []
    first_path: dict[int, str] = {}
    kind_paths: list[str] = []
    skipped: list[str] = []  # parametrization containers: masks are recorded separately
    for path, module in model.named_modules(remove_duplicate=False):
        if _inside(path, kind_paths) or _inside(path, skipped) or path in skipped:
            continue
        if parametrize.is_parametrized(module):
            skipped.append(f"{path}.parametrizations" if path else "parametrizations")
        cls = parametrize.type_before_parametrizations(module)
        same_as = first_path.setdefault(id(module), path)
        same_as = None if same_as == path else same_as
        if is_module_kind(module):
            kind_paths.append(path)
            spec = None if same_as else jsonable(module.torchslim_spec(), f"module {path!r}: torchslim_spec()")
            modules.append(ModuleRecord(path=path, kind=module_kind_name(cls), spec=spec, same_as=same_as,
                                        distribution=distribution_of(cls)))
        elif cls in STANDARD_LAYERS:
            layers.append(LayerRecord(path=path, layer=module_kind_name(cls),
                                      args={} if same_as else layer_args(module), same_as=same_as))
    return modules, layers


#: torch's own modules that hold whatever parameters they are given (no constructor argument fixes them).
_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _is_user_module(module: nn.Module) -> bool:
    """True for modules whose parameters follow no constructor argument: user classes and torch's containers."""
    cls = parametrize.type_before_parametrizations(module)
    return cls in _CONTAINERS or not (cls.__module__ == "torch" or cls.__module__.startswith("torch."))


def record_parameters(model: nn.Module) -> list[ParameterRecord]:
    """Every plain parameter held directly by a user module or a torch container (not by a layer or kind).

    torch's own layers derive their parameters' shapes from constructor arguments (recorded for the
    standard layers); a parameter a user module creates itself (learned positions, a raw weight for
    ``F.linear``) has only its shape to go by, and channel pruning may change it.
    """
    records: list[ParameterRecord] = []
    kind_paths: list[str] = []
    first: dict[int, str] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if _inside(path, kind_paths) or ".parametrizations." in f".{path}.":  # masks are recorded apart
            continue
        if is_module_kind(module):
            kind_paths.append(path)
            continue
        if not _is_user_module(module):
            continue
        for name, param in module._parameters.items():  # parametrized tensors live in their container
            if param is None:
                continue
            where = f"{path}.{name}" if path else name
            owner = first.setdefault(id(param), where)
            records.append(ParameterRecord(module=path, name=name, shape=list(param.shape),
                                           same_as=None if owner == where else owner))
    return records


def get_submodule_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def put_submodule(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Place ``module`` at ``path``; returns the (possibly new) root."""
    try:
        return replace_submodule(model, path, module)
    except AttributeError:
        raise SaveLoadError(f"the base model has no module {path.rpartition('.')[0]!r}, where the saved model "
                            f"holds {type(module).__name__} {path!r}; build base_model as it was before "
                            f"compression") from None


def _device_of(module: nn.Module | None, fallback: nn.Module) -> torch.device:
    found = model_device(module, default=None) if module is not None else None
    return found or model_device(fallback)


def replay(model: nn.Module, manifest: Manifest, kinds: dict[str, type]) -> nn.Module:
    """Rebuild registered-kind modules and re-create standard layers whose arguments differ."""
    built: dict[str, nn.Module] = {}
    for rec in manifest.modules:
        old = get_submodule_or_none(model, rec.path)
        if rec.same_as is not None:
            new = built[rec.same_as] if rec.same_as in built else get_submodule_or_none(model, rec.same_as)
            if new is None:
                raise SaveLoadError(f"manifest.json: module {rec.path!r} refers to {rec.same_as!r}, which is not rebuilt")
        else:
            cls = kinds[rec.kind]
            if (old is not None and parametrize.type_before_parametrizations(old) is cls
                    and jsonable(old.torchslim_spec(), "spec") == rec.spec):
                built[rec.path] = old
                continue
            try:
                new = cls.from_torchslim_spec(rec.spec or {})
            except Exception as exc:
                raise SaveLoadError(f"module {rec.path!r}: {rec.kind}.from_torchslim_spec({rec.spec}) failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(new, nn.Module):
                raise SaveLoadError(f"module {rec.path!r}: {rec.kind}.from_torchslim_spec returned "
                                    f"{type(new).__name__}, not an nn.Module")
            new = new.to(_device_of(old, model))
            new.train(old.training if old is not None else model.training)
        model = put_submodule(model, rec.path, new)
        built[rec.path] = new
    for rec in manifest.layers:
        old = get_submodule_or_none(model, rec.path)
        if old is None:
            continue  # the state-dict comparison reports the first key that does not fit
        have = module_kind_name(parametrize.type_before_parametrizations(old))
        if have != rec.layer:
            raise SaveLoadError(
                f"the base model does not match the saved one at {rec.path!r}: saved {rec.layer}, base has "
                f"{have}; build base_model as the model was built before compression"
            )
        if rec.same_as is not None:
            shared = get_submodule_or_none(model, rec.same_as)
            if shared is not None and shared is not old:
                put_submodule(model, rec.path, shared)
            continue
        if layer_args(old) == rec.args:
            continue
        cls = LAYER_BY_NAME.get(rec.layer)
        if cls is None:
            raise SaveLoadError(f"manifest.json: layer {rec.path!r} has unknown standard layer {rec.layer!r}")
        try:
            new = cls(**rec.args)
        except Exception as exc:
            raise SaveLoadError(f"layer {rec.path!r}: {cls.__name__}(**{rec.args}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        new = new.to(_device_of(old, model))
        new.train(old.training)
        put_submodule(model, rec.path, new)
    _resize_parameters(model, manifest)
    return model


def _resize_parameters(model: nn.Module, manifest: Manifest) -> None:
    """Give each recorded plain parameter of the base model its saved shape (values come with the weights)."""
    made: dict[str, nn.Parameter] = {}
    for rec in manifest.parameters:
        where = f"{rec.module}.{rec.name}" if rec.module else rec.name
        module = get_submodule_or_none(model, rec.module)
        old = None if module is None else module._parameters.get(rec.name)
        if old is None:
            raise SaveLoadError(f"the saved model has a parameter {where!r}, which the base model does not have; "
                                f"build base_model as the model was built before compression")
        if rec.same_as is not None:
            new = made.get(rec.same_as)
            if new is None:
                raise SaveLoadError(f"manifest.json: parameter {where!r} is the same as {rec.same_as!r}, "
                                    f"which comes later or not at all")
        elif list(old.shape) == rec.shape:
            new = old
        else:
            new = nn.Parameter(torch.empty(rec.shape, dtype=old.dtype, device=old.device),
                               requires_grad=old.requires_grad)
        made[where] = new
        if new is not old:
            setattr(module, rec.name, new)


def register_masks(model: nn.Module, manifest: Manifest) -> None:
    made: dict[str, masks.Mask] = {}
    for rec in manifest.masks:
        where = f"{rec.module}.{rec.tensor}" if rec.module else rec.tensor
        module = get_submodule_or_none(model, rec.module)
        if module is None or not isinstance(getattr(module, rec.tensor, None), torch.Tensor):
            raise SaveLoadError(f"the saved model masks {where!r}, which the base model does not have; "
                                f"build base_model as the model was built before compression")
        try:
            if rec.shares_mask_with is not None:
                if rec.shares_mask_with not in made:
                    raise SaveLoadError(f"manifest.json: mask of {where!r} shares {rec.shares_mask_with!r}, "
                                        f"which comes later or not at all")
                made[where] = masks.apply_mask(module, rec.tensor, made[rec.shares_mask_with])
            else:
                tensor = masks.underlying_tensor(module, rec.tensor)
                keep_all = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
                made[where] = masks.apply_mask(module, rec.tensor, keep_all)  # values come with the state dict
        except ModelError as exc:
            raise SaveLoadError(f"re-registering the mask of {where!r} failed: {exc}") from exc
