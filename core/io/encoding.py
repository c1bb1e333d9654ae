"""State-dict tensors to stored parts and back: masked tensors stored sparse, tied tensors once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import masks
from ..errors import SaveLoadError
from .manifest import WEIGHTS_FILE, Manifest, MaskRecord, TensorEntry
from .sparse import Encoded, decode, encode, pack_bits


#: dtypes safetensors can store (quantized tensors, for one, cannot be saved).
STORABLE = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64,
    *(getattr(torch, n) for n in ("float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32", "uint64")
      if hasattr(torch, n)),
}


DTYPES = {str(d).removeprefix("torch."): d for d in STORABLE}


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


def encode_state(model: nn.Module) -> tuple[dict[str, Encoded], list[MaskRecord]]:
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
        if tensor.dtype not in STORABLE:
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


def stored_tensors(encoded: dict[str, Encoded]) -> tuple[dict[str, TensorEntry], dict[str, torch.Tensor]]:
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


def decode_all(manifest: Manifest, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
        dtype = DTYPES.get(entry.dtype)
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
