"""Save and load compressed models: safetensors weights plus a JSON manifest, nothing pickled.

:func:`save` writes ``model.safetensors`` (every state-dict tensor, sparse-encoded where it pays, see
:mod:`torchslim.sparse`) and ``manifest.json`` (versions, recipe, metrics, structural edits, masks,
the tensor index and the SHA-256 of every file, see :mod:`torchslim.manifest`). :func:`load` checks
all of it, replays the edits on a copy of a freshly built base model, re-registers the masks and
loads the weights strictly::

    torchslim.save(result, "out/model")
    model = torchslim.load("out/model", base_model=build_model())

Structural edits are recorded, not diffed: every module of a registered kind (the low-rank factor
modules of :mod:`torchslim.lowrank`, and what plugins register through ``register_module_kinds``)
is stored as its ``torchslim_spec()`` and rebuilt with ``from_torchslim_spec``; every standard layer
(conv, linear, norm, embedding) is stored with its constructor arguments and re-created when the base
model's layer differs (channel pruning). Only registered kinds and those standard layers are ever
constructed, so a manifest cannot make :func:`load` run arbitrary code.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import functools
import itertools
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from . import lowrank, masks
from .errors import ModelError, SaveLoadError, TorchslimError
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    FileEntry,
    LayerRecord,
    Manifest,
    MaskRecord,
    ModuleRecord,
    ParameterRecord,
    TensorEntry,
    file_sha256,
    jsonable,
    read,
    render,
    verify_files,
)
from .registry import PluginRegistry, module_kind_name
from .sparse import Encoded, decode, encode, pack_bits

__all__ = ["STANDARD_LAYERS", "default_registry", "layer_args", "load", "own_parametrized_classes", "save",
           "saved_size_bytes"]

#: dtypes safetensors can store (quantized tensors, for one, cannot be saved).
_STORABLE = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64,
    *(getattr(torch, n) for n in ("float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64")
      if hasattr(torch, n)),
}
_DTYPES = {str(d).removeprefix("torch."): d for d in _STORABLE}


# ------------------------------------------------------------------------------------ standard layers
def _conv(m: nn.Module) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
            "stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups,
            "bias": m.bias is not None, "padding_mode": m.padding_mode}


def _conv_transpose(m: nn.Module) -> dict[str, Any]:
    return {**_conv(m), "output_padding": m.output_padding}


def _linear(m: nn.Module) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _batch_norm(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _layer_norm(m: nn.Module) -> dict[str, Any]:
    return {"normalized_shape": m.normalized_shape, "eps": m.eps,
            "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}


def _group_norm(m: nn.Module) -> dict[str, Any]:
    return {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps, "affine": m.affine}


def _multihead_attention(m: nn.Module) -> dict[str, Any]:
    return {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "dropout": m.dropout,
            "bias": m.in_proj_bias is not None, "add_bias_kv": m.bias_k is not None,
            "add_zero_attn": m.add_zero_attn, "kdim": m.kdim, "vdim": m.vdim, "batch_first": m.batch_first}


def _embedding(m: nn.Module) -> dict[str, Any]:
    return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx,
            "max_norm": m.max_norm, "norm_type": m.norm_type, "scale_grad_by_freq": m.scale_grad_by_freq,
            "sparse": m.sparse}


#: Layers whose shapes channel pruning may change, with how to read their constructor arguments.
STANDARD_LAYERS: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm, nn.BatchNorm3d: _batch_norm,
    nn.InstanceNorm1d: _batch_norm, nn.InstanceNorm2d: _batch_norm, nn.InstanceNorm3d: _batch_norm,
    nn.LayerNorm: _layer_norm, nn.GroupNorm: _group_norm, nn.Embedding: _embedding,
    nn.MultiheadAttention: _multihead_attention,
}
_LAYER_BY_NAME = {module_kind_name(cls): cls for cls in STANDARD_LAYERS}


def layer_args(module: nn.Module) -> dict[str, Any] | None:
    """The JSON constructor arguments of a standard layer (masked or not), or None for other modules."""
    reader = STANDARD_LAYERS.get(parametrize.type_before_parametrizations(module))
    return None if reader is None else jsonable(reader(module), "layer arguments")


# ------------------------------------------------------------------------------------ module kinds
@functools.lru_cache(maxsize=1)
def default_registry() -> PluginRegistry:
    """The plugin registry :func:`load` consults for module kinds when given none (discovered once)."""
    return PluginRegistry()


def _is_kind(module: nn.Module) -> bool:
    cls = parametrize.type_before_parametrizations(module)
    return callable(getattr(cls, "torchslim_spec", None)) and callable(getattr(cls, "from_torchslim_spec", None))


@functools.lru_cache(maxsize=1)
def _package_owners() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _distribution_of(cls: type) -> str | None:
    owners = _package_owners().get(cls.__module__.split(".")[0])
    return owners[0] if owners else None


def _known_kinds(manifest: Manifest, registry: PluginRegistry | None) -> dict[str, type]:
    known = {module_kind_name(cls): cls for cls in lowrank.MODULE_KINDS}
    needed = {rec.kind for rec in manifest.modules}
    if needed - known.keys():  # discovering plugins costs imports; only when built-ins do not suffice
        known.update((registry if registry is not None else default_registry()).module_kinds)
    for rec in manifest.modules:
        if rec.kind not in known:
            hint = f" (pip install {rec.distribution})" if rec.distribution else ""
            raise SaveLoadError(
                f"module {rec.path!r} of the saved model is of kind {rec.kind!r}, which no installed plugin "
                f"registers. Install the plugin that provides it{hint}: it must register the kind through "
                f"the register_module_kinds hook (or pass load(..., registry=...) with that plugin registered)."
            )
    return known


# ------------------------------------------------------------------------------------ recording
def _inside(path: str, prefixes: list[str]) -> bool:
    return any(path != p and (p == "" or path.startswith(p + ".")) for p in prefixes)


def _record_structure(model: nn.Module) -> tuple[list[ModuleRecord], list[LayerRecord]]:
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
        if _is_kind(module):
            kind_paths.append(path)
            spec = None if same_as else jsonable(module.torchslim_spec(), f"module {path!r}: torchslim_spec()")
            modules.append(ModuleRecord(path=path, kind=module_kind_name(cls), spec=spec, same_as=same_as,
                                        distribution=_distribution_of(cls)))
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


def _record_parameters(model: nn.Module) -> list[ParameterRecord]:
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
        if _is_kind(module):
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


@dataclass
class _Masked:
    path: str
    module: nn.Module
    name: str
    mask: masks.Mask

    @property
    def prefix(self) -> str:
        return f"{self.path}.parametrizations.{self.name}." if self.path else f"parametrizations.{self.name}."

    @property
    def original(self) -> torch.Tensor:
        return self.module.parametrizations[self.name].original


def _find_masks(model: nn.Module) -> list[_Masked]:
    found = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(module) or ".parametrizations." in f".{path}.":
            continue
        for name, plist in module.parametrizations.items():
            if not any(isinstance(p, masks.Mask) for p in plist):
                continue
            if len(plist) != 1:
                others = ", ".join(type(p).__name__ for p in plist if not isinstance(p, masks.Mask))
                raise SaveLoadError(
                    f"module {path!r}: tensor {name!r} has a torchslim Mask stacked with {others}; save can "
                    f"re-register a mask only when it is the tensor's sole parametrization. Bake the masks in "
                    f"first (torchslim.masks.finalize) or remove the other parametrization."
                )
            found.append(_Masked(path, module, name, plist[0]))
    return found


def _identity(t: torch.Tensor) -> tuple:
    """Tensors with equal identities are the same memory viewed the same way (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.device, t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def _binary(mask: torch.Tensor) -> bool:
    return mask.dtype == torch.bool or bool(((mask == 0) | (mask == 1)).all())


def _encode_state(model: nn.Module) -> tuple[dict[str, Encoded], list[MaskRecord]]:
    """Encode every state-dict tensor; masked tensors store their effective (masked) values.

    A masked tensor's ``original`` is stored as ``original * mask`` with the mask's entries as its
    bitmask, so the mask costs only a shared bit pattern; loading it as ``original`` and re-applying
    the mask reproduces the effective weight bit for bit (``x * 1 == x``, ``+-0 * 0 == +-0``).
    """
    state = model.state_dict(keep_vars=True)
    found = _find_masks(model)
    groups: dict[tuple, list[_Masked]] = {}
    for item in found:
        groups.setdefault(_identity(item.original), []).append(item)
    # A tied original masked differently by its holders has no single effective value: keep it raw.
    effective_ok = {
        key for key, items in groups.items()
        if all(_binary(i.mask.mask) for i in items)
        and all(torch.equal(i.mask.mask, items[0].mask.mask) for i in items[1:])
    }
    records: list[MaskRecord] = []
    special: dict[str, Encoded] = {}
    first_holder: dict[int, str] = {}
    cache: dict[tuple, Encoded] = {}
    with torch.no_grad():
        for item in found:
            where = f"{item.path}.{item.name}" if item.path else item.name
            owner = first_holder.setdefault(id(item.mask), where)
            records.append(MaskRecord(module=item.path, tensor=item.name,
                                      shares_mask_with=None if owner == where else owner))
            ident = _identity(item.original)
            if ident not in effective_ok:
                continue
            mask = item.mask.mask
            key = (ident, _identity(mask))
            if key not in cache:
                effective = getattr(item.module, item.name)  # original * mask, exactly as the model sees it
                cache[key] = encode(effective, pattern=mask != 0)
            weight = cache[key]
            special[item.prefix + "original"] = weight
            bits = weight.parts.get("bits")
            mask_key = ("mask", *key)
            if mask_key not in cache and mask.dtype == torch.bool and bits is not None \
                    and torch.equal(bits, pack_bits(mask.detach().to("cpu"))):
                # the mask is exactly the weight's bit pattern: store it as that pattern plus True
                cache[mask_key] = Encoded("fill", tuple(mask.shape), torch.bool,
                                          {"bits": bits, "fill": torch.ones(1, dtype=torch.bool)})
            if mask_key in cache:
                special[item.prefix + "0.mask"] = cache[mask_key]
    encoded: dict[str, Encoded] = {}
    for key, tensor in state.items():
        if tensor.dtype not in _STORABLE:
            raise SaveLoadError(f"state-dict tensor {key!r} has dtype {tensor.dtype}, which safetensors cannot "
                                f"store; convert it (e.g. dequantize) before saving")
        if key in special:
            encoded[key] = special[key]
            continue
        ident = ("raw", _identity(tensor))
        if ident not in cache:
            cache[ident] = encode(tensor)
        encoded[key] = cache[ident]
    return encoded, records


def _stored_tensors(encoded: dict[str, Encoded]) -> tuple[dict[str, TensorEntry], dict[str, torch.Tensor]]:
    """Name every part once (shared parts and tied tensors are stored once) for safetensors."""
    names: dict[int, str] = {}
    stored: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    entries: dict[str, TensorEntry] = {}
    for key, enc in encoded.items():
        parts: dict[str, str] = {}
        for part, tensor in enc.parts.items():
            name = names.get(id(tensor))
            if name is None:
                base = key if part == "data" else f"{key}:{part}"
                name, counter = base, 2
                while name in stored:
                    name, counter = f"{base}#{counter}", counter + 1
                names[id(tensor)] = name
                pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
                # safetensors refuses two tensors on one storage (views of one flat buffer)
                stored[name] = tensor.clone() if pointer and pointer in storages else tensor
                storages.add(pointer)
            parts[part] = name
        entries[key] = TensorEntry(encoding=enc.encoding, dtype=str(enc.dtype).removeprefix("torch."),
                                   shape=list(enc.shape), parts=parts)
    return entries, stored


# ------------------------------------------------------------------------------------ writing
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_into(directory: Path, model: nn.Module, recipe: Any, metrics: Any, *, durable: bool) -> None:
    """Write ``model.safetensors`` and ``manifest.json`` into the existing empty ``directory``."""
    from . import __version__

    encoded, mask_records = _encode_state(model)
    modules, layers = _record_structure(model)
    parameters = _record_parameters(model)
    entries, stored = _stored_tensors(encoded)
    weights = directory / WEIGHTS_FILE
    # one metadata key: safetensors writes several in random order, and saves should be reproducible
    save_file(stored, str(weights), metadata={"format": f"{FORMAT}-{FORMAT_VERSION}"})
    if durable:
        _fsync(weights)
    manifest = Manifest(
        torchslim_version=__version__,
        torch_version=torch.__version__.split("+")[0],
        model_class=module_kind_name(parametrize.type_before_parametrizations(model)),
        recipe=None if recipe is None else jsonable(recipe, "recipe"),
        metrics=None if metrics is None else jsonable(metrics, "metrics"),
        modules=modules, layers=layers, parameters=parameters, masks=mask_records, tensors=entries,
        files={WEIGHTS_FILE: FileEntry(bytes=weights.stat().st_size, sha256=file_sha256(weights))},
    )
    path = directory / MANIFEST_FILE
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(manifest))
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def save(result_or_model: Any, directory: str | os.PathLike, *, recipe: Any = None, metrics: Any = None) -> Path:
    """Save a compressed model (or a :class:`~torchslim.RunResult`) into ``directory``; returns its path.

    Writes ``model.safetensors`` and ``manifest.json``. From a RunResult the model, recipe and metrics
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
        with _atomic_directory(target) as scratch:
            _write_into(scratch, model, recipe, metrics, durable=True)
    except TorchslimError:
        raise
    except Exception as exc:
        raise SaveLoadError(f"saving to {target} failed ({type(exc).__name__}: {exc}); "
                            f"its previous contents are unchanged") from exc
    return target


def saved_size_bytes(model: Any) -> int:
    """Bytes :func:`save` writes for ``model`` (weights plus manifest), measured in a temporary directory."""
    model, recipe, metrics = _unpack(model, None, None)
    with tempfile.TemporaryDirectory(prefix="torchslim-size-") as scratch:
        _write_into(Path(scratch), model, recipe, metrics, durable=False)
        return sum(p.stat().st_size for p in Path(scratch).iterdir())


# ------------------------------------------------------------------------------------ atomic swap
_TMP, _OLD = "torchslim-tmp", "torchslim-old"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _leftovers(target: Path, tag: str) -> list[Path]:
    prefix = f".{target.name}.{tag}-"
    out = []
    for path in target.parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            out.append(path)
    return out


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise SaveLoadError(f"{target} exists and is not a directory; choose a directory path to save into")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in (MANIFEST_FILE, WEIGHTS_FILE))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise SaveLoadError(
                f"{target} holds files torchslim did not write ({shown}); save replaces the whole directory, "
                f"so choose a new or empty directory"
            )


@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch directory; on success it replaces ``target`` by rename, else it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target)
    for stale in _leftovers(target, _TMP):  # scratch dirs of saves that were killed
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_TMP}-{os.getpid()}-", dir=target.parent))
    try:
        yield scratch
        _fsync_dir(scratch)
        if not target.exists():
            os.rename(scratch, target)
        elif _exchange(scratch, target):
            shutil.rmtree(scratch)  # now holds the previous contents
        else:
            # No atomic exchange: move the old directory aside first. A crash between the two renames
            # leaves the previous save complete in the backup, which load() points to.
            backup = target.parent / f".{target.name}.{_OLD}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, backup)
            os.rename(scratch, target)
            shutil.rmtree(backup, ignore_errors=True)
        _fsync_dir(target.parent)
        for stale in _leftovers(target, _OLD):
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------ loading
def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _put(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Place ``module`` at ``path``; returns the (possibly new) root."""
    if path == "":
        return module
    parent_path, _, leaf = path.rpartition(".")
    parent = _get(model, parent_path)
    if parent is None:
        raise SaveLoadError(f"the base model has no module {parent_path!r}, where the saved model holds "
                            f"{type(module).__name__} {path!r}; build base_model as it was before compression")
    setattr(parent, leaf, module)
    return model


def own_parametrized_classes(model: nn.Module) -> nn.Module:
    """Give every parametrized module of ``model`` a private copy of its generated class; returns ``model``.

    ``copy.deepcopy`` shares the generated ``Parametrized*`` classes between original and copy, and
    registering or removing a parametrization edits that class, which would change the original too.
    Call this on a copy before changing its parametrizations.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return model


def _device_of(module: nn.Module | None, fallback: nn.Module) -> torch.device:
    for source in (module, fallback):
        if source is None:
            continue
        for tensor in itertools.chain(source.parameters(), source.buffers()):
            return tensor.device
    return torch.device("cpu")


def _replay(model: nn.Module, manifest: Manifest, kinds: dict[str, type]) -> nn.Module:
    """Rebuild registered-kind modules and re-create standard layers whose arguments differ."""
    built: dict[str, nn.Module] = {}
    for rec in manifest.modules:
        old = _get(model, rec.path)
        if rec.same_as is not None:
            new = built[rec.same_as] if rec.same_as in built else _get(model, rec.same_as)
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
        model = _put(model, rec.path, new)
        built[rec.path] = new
    for rec in manifest.layers:
        old = _get(model, rec.path)
        if old is None:
            continue  # the state-dict comparison reports the first key that does not fit
        have = module_kind_name(parametrize.type_before_parametrizations(old))
        if have != rec.layer:
            raise SaveLoadError(
                f"the base model does not match the saved one at {rec.path!r}: saved {rec.layer}, base has "
                f"{have}; build base_model as the model was built before compression"
            )
        if rec.same_as is not None:
            shared = _get(model, rec.same_as)
            if shared is not None and shared is not old:
                _put(model, rec.path, shared)
            continue
        if layer_args(old) == rec.args:
            continue
        cls = _LAYER_BY_NAME.get(rec.layer)
        if cls is None:
            raise SaveLoadError(f"manifest.json: layer {rec.path!r} has unknown standard layer {rec.layer!r}")
        try:
            new = cls(**rec.args)
        except Exception as exc:
            raise SaveLoadError(f"layer {rec.path!r}: {cls.__name__}(**{rec.args}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        new = new.to(_device_of(old, model))
        new.train(old.training)
        _put(model, rec.path, new)
    _resize_parameters(model, manifest)
    return model


def _resize_parameters(model: nn.Module, manifest: Manifest) -> None:
    """Give each recorded plain parameter of the base model its saved shape (values come with the weights)."""
    made: dict[str, nn.Parameter] = {}
    for rec in manifest.parameters:
        where = f"{rec.module}.{rec.name}" if rec.module else rec.name
        module = _get(model, rec.module)
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


def _register_masks(model: nn.Module, manifest: Manifest) -> None:
    made: dict[str, masks.Mask] = {}
    for rec in manifest.masks:
        where = f"{rec.module}.{rec.tensor}" if rec.module else rec.tensor
        module = _get(model, rec.module)
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


def _decode_all(manifest: Manifest, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    listed = {name for entry in manifest.tensors.values() for name in entry.parts.values()}
    missing = sorted(listed - stored.keys())
    if missing:
        raise SaveLoadError(f"{WEIGHTS_FILE} lacks tensor {missing[0]!r} that manifest.json lists")
    extra = sorted(stored.keys() - listed)
    if extra:
        raise SaveLoadError(f"{WEIGHTS_FILE} holds tensor {extra[0]!r} that manifest.json does not list")
    out: dict[str, torch.Tensor] = {}
    cache: dict[tuple, torch.Tensor] = {}
    for key, entry in manifest.tensors.items():
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            raise SaveLoadError(f"manifest.json: tensor {key!r} has unknown dtype {entry.dtype!r}")
        signature = (entry.encoding, entry.dtype, tuple(entry.shape), tuple(sorted(entry.parts.items())))
        if signature not in cache:
            try:
                cache[signature] = decode(entry.encoding, {p: stored[n] for p, n in entry.parts.items()},
                                          entry.shape, dtype)
            except (ValueError, RuntimeError) as exc:
                raise SaveLoadError(f"{WEIGHTS_FILE}: tensor {key!r} cannot be decoded: {exc}") from None
        out[key] = cache[signature]
    return out


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


def _read_manifest(directory: Path) -> Manifest:
    if not directory.exists():
        backups = sorted(directory.parent.glob(f".{directory.name}.{_OLD}-*"))
        if backups:
            raise SaveLoadError(f"{directory} does not exist, but {backups[-1]} holds the previous save of an "
                                f"interrupted save; rename it to {directory.name} to use it")
    return read(directory)


def load(directory: str | os.PathLike, base_model: nn.Module, *, registry: PluginRegistry | None = None) -> nn.Module:
    """Rebuild the model saved in ``directory`` on a copy of ``base_model``; ``base_model`` is not changed.

    ``base_model`` is the model as built before compression (same class and constructor arguments;
    its weights do not matter). The manifest and every file are verified first; then registered
    module kinds are rebuilt, changed standard layers re-created, masks re-registered and the
    weights loaded strictly. ``registry`` supplies plugin module kinds (default: the installed
    plugins, discovered once). Raises :class:`SaveLoadError` naming the file, module or key at fault.
    Nothing is unpickled.
    """
    if not isinstance(base_model, nn.Module):
        raise SaveLoadError(f"base_model must be an nn.Module built as before compression, got "
                            f"{type(base_model).__name__}")
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if WEIGHTS_FILE not in manifest.files:
        raise SaveLoadError(f"{directory / MANIFEST_FILE} does not list {WEIGHTS_FILE}")
    verify_files(directory, manifest)
    kinds = _known_kinds(manifest, registry)
    try:
        stored = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaveLoadError(f"{directory / WEIGHTS_FILE} cannot be read as safetensors: {exc}") from None
    tensors = _decode_all(manifest, stored)
    model = own_parametrized_classes(copy.deepcopy(base_model))  # every change below happens on the copy
    try:
        model = _replay(model, manifest, kinds)
        _register_masks(model, manifest)
        _check_fits(model, tensors, manifest, base_model)
        _match_dtypes(model, tensors)
        model.load_state_dict(tensors, strict=True)
    except TorchslimError:
        raise
    except Exception as exc:
        raise SaveLoadError(f"loading {directory} into {type(base_model).__name__} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    return model
