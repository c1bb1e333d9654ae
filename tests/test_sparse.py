"""Sparse tensor encodings: exact to the bit for every dtype, and small where sparsity allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim.io.sparse import PART_OVERHEAD, decode, encode, pack_bits, unpack_bits

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers, so -0.0 differs from 0.0 and NaN payloads count."""
    return t.reshape(-1).view(INT_VIEW[t.element_size()])


def round_trip(t: torch.Tensor, **kwargs) -> tuple[str, torch.Tensor]:
    enc = encode(t, **kwargs)
    out = decode(enc.encoding, enc.parts, enc.shape, enc.dtype)
    assert out.dtype == t.dtype and out.shape == t.shape
    return enc.encoding, out


@given(st.lists(st.booleans(), max_size=70))
@settings(max_examples=60, deadline=None)
def test_pack_bits_round_trips_and_matches_numpy_little_bit_order(flags):
    t = torch.tensor(flags, dtype=torch.bool)
    packed = pack_bits(t)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(flags) + 7) // 8
    assert packed.tolist() == np.packbits(np.array(flags, dtype=bool), bitorder="little").tolist()
    assert unpack_bits(packed, len(flags)).tolist() == flags


def sample(dtype: torch.dtype, zeros: float, n: int = 4096) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) >= zeros
    if dtype.is_floating_point:
        t = torch.randn(n, generator=g)
    else:
        t = torch.randint(1, 100, (n,), generator=g)
    t = torch.where(torch.rand(n, generator=g) < zeros, torch.zeros_like(t), t)
    return t.to(dtype).reshape(64, -1)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int8,
          torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.9, 1.0])
def test_every_dtype_round_trips_bit_for_bit(dtype, zeros):
    t = sample(dtype, zeros)
    _, out = round_trip(t)
    assert torch.equal(bits(out), bits(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_negative_zero_nan_payload_inf_and_denormals_survive(dtype):
    t = sample(dtype, 0.9).reshape(-1).clone()
    t[1::13] = -0.0
    t[5] = float("inf")
    t[6] = float("-inf")
    t[7] = torch.finfo(dtype).tiny / 4  # a denormal
    raw = bits(t)
    raw[8] = bits(torch.tensor([float("nan")], dtype=dtype))[0] | 1  # a NaN with a non-default payload
    encoding, out = round_trip(t)
    assert encoding == "bitmask"
    assert torch.equal(bits(out), bits(t))
    assert int(torch.signbit(out[1::13]).sum()) == t[1::13].numel()


def test_ninety_percent_sparse_float32_is_stored_in_about_an_eighth_of_the_bytes():
    t = sample(torch.float32, 0.9)
    enc = encode(t)
    assert enc.encoding == "bitmask"
    dense = t.numel() * 4
    # 1 bit per entry plus 4 bytes per kept value: about 0.03 + 0.1 of dense
    assert enc.nbytes <= 0.15 * dense


def test_dense_tensors_and_tiny_tensors_stay_dense():
    assert encode(sample(torch.float32, 0.0)).encoding == "dense"
    assert encode(torch.zeros(3)).encoding == "dense"  # savings below the per-part overhead
    assert encode(torch.tensor(0.0)).encoding == "dense"
    assert encode(torch.zeros(0)).encoding == "dense"
    assert encode(torch.zeros(2, dtype=torch.complex64)).encoding == "dense"


def test_a_mask_is_stored_as_its_bit_pattern_plus_one_value():
    mask = sample(torch.bool, 0.7)
    enc = encode(mask)
    assert enc.encoding == "fill" and set(enc.parts) == {"bits", "fill"}
    assert enc.nbytes == (mask.numel() + 7) // 8 + 1
    _, out = round_trip(mask)
    assert torch.equal(out, mask)


def test_pattern_forces_the_given_entries_so_a_mask_can_share_the_bits():
    weight = sample(torch.float32, 0.5)
    mask = weight != 0
    mask[0, :3] = True  # kept entries may be zero themselves
    weight[0, :3] = torch.tensor([0.0, -0.0, 0.0])
    enc = encode(weight, pattern=mask)
    assert enc.encoding == "bitmask"
    assert torch.equal(enc.parts["bits"], pack_bits(mask))
    _, out = round_trip(weight, pattern=mask)
    assert torch.equal(bits(out), bits(weight))


def test_an_invalid_pattern_is_ignored():
    weight = sample(torch.float32, 0.5)
    mask = torch.zeros_like(weight, dtype=torch.bool)  # claims everything is zero
    _, out = round_trip(weight, pattern=mask)
    assert torch.equal(bits(out), bits(weight))
    enc = encode(weight, pattern=mask)
    assert enc.encoding == "bitmask" and torch.equal(enc.parts["bits"], pack_bits(weight != 0))


def test_sparse_form_is_chosen_only_when_it_saves_more_than_its_overhead():
    n = 64  # float32: dense 256 bytes, bitmask 8 bytes of bits + 4 per kept value + overhead
    saving = lambda zeros: zeros * 4 - n // 8  # noqa: E731
    few, many = 32, 48
    assert saving(few) < PART_OVERHEAD < saving(many)
    for zeros, expected in ((few, "dense"), (many, "bitmask")):
        t = 1.5 + torch.arange(n, dtype=torch.float32)
        t[:zeros] = 0
        assert encode(t).encoding == expected


def test_decode_rejects_parts_that_do_not_fit():
    t = sample(torch.float32, 0.9)
    enc = encode(t)
    with pytest.raises(ValueError, match="packed bits"):
        decode("bitmask", {**enc.parts, "bits": enc.parts["bits"][:-1]}, enc.shape, enc.dtype)
    with pytest.raises(ValueError, match="values must hold"):
        decode("bitmask", {**enc.parts, "values": enc.parts["values"][:-1]}, enc.shape, enc.dtype)
    with pytest.raises(ValueError, match="unknown encoding"):
        decode("zstd", enc.parts, enc.shape, enc.dtype)
    with pytest.raises(ValueError, match="needs parts"):
        decode("bitmask", {"bits": enc.parts["bits"]}, enc.shape, enc.dtype)
    with pytest.raises(ValueError, match="expected"):
        decode("dense", {"data": t}, (3,), torch.float32)
