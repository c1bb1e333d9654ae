"""Lossless compact encodings of tensors for :func:`torchslim.save`: dense, bitmask, or fill.

Every encoding is exact to the bit for every dtype safetensors stores (floats incl. ``bfloat16``,
``float16`` and ``float8``, integers, ``bool``): values are moved through an integer view of the
same width, so ``-0.0``, NaN payloads and denormals come back unchanged.

- ``dense``: the tensor itself (part ``data``).
- ``bitmask``: part ``bits`` is one bit per entry, packed eight to a ``uint8`` (entry ``8k + i``
  is bit ``i``, least significant first, of byte ``k``; like ``numpy.packbits(bitorder="little")``),
  set where the entry is stored; part ``values`` holds the stored entries in order (original dtype).
  Every other entry is zero. When some of those zeros are ``-0.0``, part ``signs`` is a packed
  bitmask over the zero entries only, set where the zero is negative.
- ``fill``: as ``bitmask``, but every stored entry has the same value, kept once in the one-element
  part ``fill`` (masks: ``bits`` plus ``True``).

:func:`encode` picks the smallest; a sparse form is used only when it saves more than the bookkeeping
it costs (about :data:`PART_OVERHEAD` bytes per extra part).

>>> t = torch.tensor([0.0, 1.5, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0] * 64)
>>> enc = encode(t)
>>> enc.encoding, enc.nbytes < t.numel() * 4
('bitmask', True)
>>> torch.equal(decode(enc.encoding, enc.parts, enc.shape, enc.dtype), t)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["Encoded", "PART_OVERHEAD", "decode", "encode", "pack_bits", "unpack_bits"]

#: Estimated bytes of header (safetensors) and manifest text each extra stored part costs.
PART_OVERHEAD = 128

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SHIFTS = torch.arange(8, dtype=torch.uint8)


@dataclass
class Encoded:
    """One tensor in stored form: the encoding name, the original shape and dtype, and the parts."""

    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data the parts occupy (without headers)."""
        return sum(p.numel() * p.element_size() for p in self.parts.values())


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (flattened) into ``ceil(n / 8)`` bytes, least significant bit first."""
    flat = flags.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    # the eight shifted bits of a byte are disjoint, so their sum is their bitwise OR
    return (flat.view(-1, 8) << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` flags as a 1-D ``bool`` tensor."""
    expected = (count + 7) // 8
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed bits must be a 1-D uint8 tensor of {expected} bytes for {count} entries, "
            f"got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    return ((packed.unsqueeze(1) >> _SHIFTS) & 1).reshape(-1)[:count].bool()


def _int_view_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The integer dtype of the same width, or None when the dtype is stored dense only."""
    if dtype.is_complex:
        return None
    return _INT_VIEW.get(torch.empty((), dtype=dtype).element_size())


def _negative_zero(dtype: torch.dtype, int_dtype: torch.dtype) -> int:
    """The bit pattern of ``-0.0`` in ``dtype`` (0 for integers and formats without a negative zero)."""
    if not dtype.is_floating_point:
        return 0
    pattern = int(torch.tensor(-0.0, dtype=dtype).view(int_dtype))
    top = 1 << (8 * torch.empty((), dtype=dtype).element_size() - 1)
    # -0.0 is the lone sign bit in IEEE-style formats; "fnuz" float8 formats have no -0.0 at all
    return pattern if pattern in (top, -top) else 0


def encode(tensor: torch.Tensor, *, pattern: torch.Tensor | None = None) -> Encoded:
    """Encode ``tensor`` (any device; the parts are on the CPU) in the smallest exact form.

    ``pattern`` (boolean, the tensor's shape) forces the ``bitmask`` form with exactly those entries
    stored, so a mask can share the ``bits`` part; it is ignored when the tensor is non-zero where
    ``pattern`` is ``False``.
    """
    t = tensor.detach().to("cpu").contiguous()
    shape, dtype, n = tuple(t.shape), t.dtype, t.numel()
    dense = Encoded("dense", shape, dtype, {"data": t})
    int_dtype = _int_view_dtype(dtype)
    if int_dtype is None or n == 0:
        return dense
    bits_of = t.reshape(-1).view(int_dtype)
    negzero = _negative_zero(dtype, int_dtype)
    if negzero:  # floats: +0.0 and -0.0 are both zeros; the sign is kept apart
        magnitude = (1 << (8 * t.element_size() - 1)) - 1  # every bit but the sign bit
        zero = (bits_of & magnitude) == 0
    else:
        zero = bits_of == 0
    keep = None
    if pattern is not None:
        keep = pattern.detach().to("cpu").reshape(-1).to(torch.bool)
        if keep.numel() != n or bool((~keep & ~zero).any()):
            keep = None
    forced = keep is not None
    if keep is None:
        keep = ~zero
    parts: dict[str, torch.Tensor] = {"bits": pack_bits(keep)}
    if negzero:
        signs = bits_of[~keep] == negzero
        if bool(signs.any()):
            parts["signs"] = pack_bits(signs)
    kept = bits_of[keep]
    element = t.element_size()
    candidates = [(n * element, dense)]
    if kept.numel() and bool((kept == kept[0]).all()):
        fill_parts = dict(parts, fill=kept[:1].view(dtype).clone())
        fill = Encoded("fill", shape, dtype, fill_parts)
        candidates.append((fill.nbytes + PART_OVERHEAD * (len(fill_parts) - 1), fill))
    bitmask = Encoded("bitmask", shape, dtype, dict(parts, values=kept.view(dtype).clone()))
    candidates.append((bitmask.nbytes + PART_OVERHEAD * (len(bitmask.parts) - 1), bitmask))
    if forced:  # the bits are shared with a mask, so a sparse form is never the larger one
        candidates = candidates[1:]
    return min(candidates, key=lambda c: c[0])[1]


def decode(encoding: str, parts: dict[str, torch.Tensor], shape: tuple[int, ...] | list[int],
           dtype: torch.dtype) -> torch.Tensor:
    """Rebuild the tensor :func:`encode` stored; raises ``ValueError`` when the parts do not fit."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    expected = {"dense": {"data"}, "bitmask": {"bits", "values"}, "fill": {"bits", "fill"}}
    if encoding not in expected:
        raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(expected)}")
    names = set(parts)
    if not expected[encoding] <= names or not names <= expected[encoding] | {"signs"}:
        raise ValueError(f"encoding {encoding!r} needs parts {sorted(expected[encoding])} "
                         f"(and optionally 'signs'), got {sorted(names)}")
    if encoding == "dense":
        data = parts["data"]
        if data.dtype != dtype or tuple(data.shape) != shape:
            raise ValueError(f"stored {data.dtype} of shape {tuple(data.shape)}, expected {dtype} of shape {shape}")
        return data
    int_dtype = _int_view_dtype(dtype)
    if int_dtype is None:
        raise ValueError(f"dtype {dtype} is stored dense only")
    keep = unpack_bits(parts["bits"], n)
    count = int(keep.sum())
    out = torch.zeros(n, dtype=int_dtype)
    source = parts["values"] if encoding == "bitmask" else parts["fill"]
    wanted = count if encoding == "bitmask" else 1
    if source.dtype != dtype or source.numel() != wanted:
        raise ValueError(f"{'values' if encoding == 'bitmask' else 'fill'} must hold {wanted} {dtype} "
                         f"entries, got {source.numel()} of {source.dtype}")
    out[keep] = source.reshape(-1).view(int_dtype)
    if "signs" in parts:
        negzero = _negative_zero(dtype, int_dtype)
        if not negzero:
            raise ValueError(f"dtype {dtype} has no negative zero, but a 'signs' part is stored")
        negative = unpack_bits(parts["signs"], n - count)
        out[~keep] = torch.where(negative, torch.tensor(negzero, dtype=int_dtype), torch.tensor(0, dtype=int_dtype))
    return out.view(dtype).reshape(shape)
