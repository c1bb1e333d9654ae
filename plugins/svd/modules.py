"""Low-rank factor modules: what a decomposed ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` becomes.

Each factor module is a plain ``nn.Module`` whose two children are ordinary ``nn.Linear``/``nn.ConvNd``
layers, so the result trains with any loop, traces with :func:`torch.jit.trace` and exports to ONNX.
Each keeps the original layer's stride, padding (including ``"same"``/``"valid"``), dilation,
groups, bias and ``padding_mode``; with full rank and the right weights it computes exactly what the
original layer computes (see :mod:`torchslim.decompose` for how the weights are chosen).

- :class:`LowRankLinear`: ``Linear(in, r)`` then ``Linear(r, out)``.
- :class:`ChannelLowRankConv`: a ``K x K`` conv with ``r`` filters per group, then a ``1 x 1`` conv back
  to the output channels (Conv1d with ``dims=1``, Conv2d with ``dims=2``).
- :class:`SpatialLowRankConv2d`: a ``Kh x 1`` conv with ``r`` channels per group, then a ``1 x Kw`` conv
  (Jaderberg et al. 2014, "spatial SVD" in AIMET).

``rank`` is always per group: the intermediate tensor has ``rank * groups`` channels.

Every kind offers ``torchslim_spec()`` (JSON constructor arguments) and
``from_torchslim_spec(spec)``, and is listed in :data:`MODULE_KINDS`, so :func:`torchslim.load`
rebuilds them from a manifest without unpickling anything.

>>> layer = LowRankLinear(64, 32, rank=8)
>>> layer(torch.zeros(2, 64)).shape
torch.Size([2, 32])
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["ChannelLowRankConv", "LowRankLinear", "MODULE_KINDS", "SpatialLowRankConv2d"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _tuple(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims:
        raise ValueError(f"expected {dims} values, got {value}")
    return value


def _padding(value: str | int | Sequence[int], dims: int) -> str | tuple[int, ...]:
    return value if isinstance(value, str) else _tuple(value, dims)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class LowRankLinear(nn.Module):
    """``nn.Linear(in_features, out_features)`` as ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``.

    Input ``(..., in_features)``, output ``(..., out_features)``; MACs per row ``rank * (in + out)``
    instead of ``in * out``. The bias, if any, sits on ``second``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.first = nn.Linear(self.in_features, self.rank, bias=False)
        self.second = nn.Linear(self.rank, self.out_features, bias=bias)

    @classmethod
    def like(cls, layer: nn.Linear, rank: int) -> "LowRankLinear":
        """A factor module with ``layer``'s sizes and bias setting (weights uninitialised)."""
        module = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        return module.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def torchslim_spec(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments."""
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.second.bias is not None}

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "LowRankLinear":
        """Rebuild from :meth:`torchslim_spec` output (weights come from the state dict)."""
        return cls(**spec)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


class _TwoConvs(nn.Module):
    """Shared part of the conv factor modules: ``second(first(x))`` and the conv geometry."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def _geometry_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "rank": self.rank, "stride": list(self.stride),
            "padding": _jsonable(self.padding), "dilation": list(self.dilation), "groups": self.groups,
            "bias": self.second.bias is not None, "padding_mode": self.padding_mode,
        }


class ChannelLowRankConv(_TwoConvs):
    """A ConvNd as a ``K``-kernel conv with ``rank`` filters per group, then a 1-kernel conv back.

    ``first`` keeps the original kernel, stride, padding, dilation, groups and ``padding_mode``;
    ``second`` is a pointwise conv with the same groups that carries the bias. ``dims`` selects
    Conv1d (1) or Conv2d (2). MACs per output position ``rank * (in_channels * prod(K) + out_channels)``
    instead of ``out_channels * in_channels / groups * prod(K)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], rank: int,
                 stride: int | Sequence[int] = 1, padding: str | int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", dims: int = 2) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims={dims} must be 1, 2 or 3")
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        conv = _CONV[dims]
        self.dims, self.rank, self.groups = dims, int(rank), int(groups)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _tuple(kernel_size, dims)
        self.stride, self.dilation = _tuple(stride, dims), _tuple(dilation, dims)
        self.padding, self.padding_mode = _padding(padding, dims), padding_mode
        self.first = conv(self.in_channels, self.rank * self.groups, self.kernel_size, self.stride,
                          self.padding, self.dilation, self.groups, bias=False, padding_mode=padding_mode)
        self.second = conv(self.rank * self.groups, self.out_channels, 1, groups=self.groups, bias=bias)

    @classmethod
    def like(cls, layer: nn.Conv1d | nn.Conv2d, rank: int) -> "ChannelLowRankConv":
        """A factor module with ``layer``'s geometry (weights uninitialised)."""
        module = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, layer.stride,
                     layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                     layer.padding_mode, dims=len(layer.kernel_size))
        return module.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def torchslim_spec(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments."""
        return {**self._geometry_spec(), "dims": self.dims}

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "ChannelLowRankConv":
        """Rebuild from :meth:`torchslim_spec` output (weights come from the state dict)."""
        return cls(**spec)

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.rank}x{self.groups} -> {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")


class SpatialLowRankConv2d(_TwoConvs):
    """A Conv2d as a ``Kh x 1`` conv with ``rank`` channels per group, then a ``1 x Kw`` conv.

    The vertical conv ``first`` takes the height parts of stride, padding and dilation, the horizontal
    ``second`` the width parts and the bias; both use the original groups and ``padding_mode``
    (zero, reflect, replicate and circular padding are separable, so full rank is exact).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], rank: int,
                 stride: int | Sequence[int] = 1, padding: str | int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        self.rank, self.groups = int(rank), int(groups)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _tuple(kernel_size, 2)
        self.stride, self.dilation = _tuple(stride, 2), _tuple(dilation, 2)
        self.padding, self.padding_mode = _padding(padding, 2), padding_mode
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if isinstance(self.padding, str):  # "same"/"valid" apply per axis; a 1-wide axis gets none
            pad_v: str | tuple[int, int] = self.padding
            pad_h: str | tuple[int, int] = self.padding
        else:
            pad_v, pad_h = (self.padding[0], 0), (0, self.padding[1])
        mid = self.rank * self.groups
        self.first = nn.Conv2d(self.in_channels, mid, (kh, 1), (sh, 1), pad_v, (dh, 1), self.groups,
                               bias=False, padding_mode=padding_mode)
        self.second = nn.Conv2d(mid, self.out_channels, (1, kw), (1, sw), pad_h, (1, dw), self.groups,
                                bias=bias, padding_mode=padding_mode)

    @classmethod
    def like(cls, layer: nn.Conv2d, rank: int) -> "SpatialLowRankConv2d":
        """A factor module with ``layer``'s geometry (weights uninitialised)."""
        module = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, layer.stride,
                     layer.padding, layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
        return module.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def torchslim_spec(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments."""
        return self._geometry_spec()

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "SpatialLowRankConv2d":
        """Rebuild from :meth:`torchslim_spec` output (weights come from the state dict)."""
        return cls(**spec)

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.rank}x{self.groups} -> {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")


#: Every factor module class; :func:`torchslim.load` may rebuild these from a manifest.
MODULE_KINDS: list[type[nn.Module]] = [LowRankLinear, ChannelLowRankConv, SpatialLowRankConv2d]
