"""MACs of a Linear/ConvNd and of its factor modules at a rank (linear in the rank)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

def layer_macs(layer: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of one call of a Linear/ConvNd with these input and output shapes."""
    if isinstance(layer, nn.Linear):
        return math.prod(out_shape[:-1]) * layer.in_features * layer.out_features
    kernel = math.prod(layer.kernel_size)
    return math.prod(out_shape) * (layer.in_channels // layer.groups) * kernel


def macs_per_rank(layer: nn.Module, form: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs the ``form`` factor module spends per unit of (per-group) rank; linear in the rank."""
    if form == "linear":
        return math.prod(out_shape[:-1]) * (layer.in_features + layer.out_features)
    batch, positions = out_shape[0], math.prod(out_shape[2:])
    if form == "weight":
        return batch * positions * (layer.in_channels * math.prod(layer.kernel_size) + layer.out_channels)
    if form == "spatial":
        (kh, kw), width_in, height_out = layer.kernel_size, in_shape[-1], out_shape[-2]
        vertical = height_out * width_in * layer.in_channels * kh   # the Kh x 1 conv keeps the full width
        horizontal = positions * layer.out_channels * kw
        return batch * (vertical + horizontal)
    raise ValueError(f"unknown form {form!r}")


def factor_macs(layer: nn.Module, form: str, rank: int, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of the ``form`` factor module of ``layer`` at ``rank``."""
    return macs_per_rank(layer, form, in_shape, out_shape) * int(rank)
