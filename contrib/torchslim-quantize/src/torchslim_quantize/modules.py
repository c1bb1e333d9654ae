"""int8 module kinds: ``Int8Linear``, ``Int8Conv`` and ``Int8LSTM`` (GRU and RNN: :mod:`.recurrent`), stored as int8.

Weights are quantized symmetrically per output channel (``w ~= q * scale[row]``, ``q`` in [-127, 127],
zero point 0, so pruned zeros stay exactly zero). The int8 tensor is a frozen ``nn.Parameter``
(``requires_grad=False``): it is counted as a parameter, saved as int8 by :func:`torchslim.save`
and never touched by an optimizer; the per-channel scales are a float32 buffer.

Each class is a torchslim *module kind* (``torchslim_spec()`` / ``from_torchslim_spec()``), so
:func:`torchslim.load` rebuilds it from the manifest and loads its int8 weights strictly.

``Int8Linear`` with ``kernel="dynamic"`` runs PyTorch's int8 x int8 dynamic-quantization kernel
(``torch.ops.quantized.linear_dynamic``, FBGEMM / x86 / oneDNN): activations are quantized per
batch on the fly. The kernel's packed weight is built lazily from the int8 parameter and rebuilt
whenever it changes; it is never part of the state dict. In training mode with gradients enabled,
on non-CPU devices, for non-float32 inputs, or where the kernel is missing, the layer computes
``F.linear`` with the dequantized weight instead (same stored weights, float arithmetic).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import dequantize, dynamic_kernel, int8_parameter, prepack, quantize_per_channel, version_key, weight_of
from .recurrent import Int8GRU, Int8Recurrent, Int8RNN

__all__ = ["Int8Conv", "Int8GRU", "Int8LSTM", "Int8Linear", "Int8RNN", "MODULE_KINDS", "dequantize",
           "dynamic_kernel", "quantize_per_channel"]

# ------------------------------------------------------------------------------------------- Linear
class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and per-output-channel scales.

    >>> layer = Int8Linear.from_float(nn.Linear(8, 4))
    >>> layer(torch.randn(2, 8)).shape
    torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel: str = "dynamic",
                 reduce_range: bool = True) -> None:
        super().__init__()
        if kernel not in ("dynamic", "weight-only"):
            raise ValueError(f"kernel={kernel!r} must be 'dynamic' or 'weight-only'")
        self.in_features, self.out_features, self.kernel = int(in_features), int(out_features), kernel
        # 7-bit activations: what PyTorch uses on x86, where 8-bit products can saturate without VNNI
        self.reduce_range = bool(reduce_range)
        self.weight = int8_parameter((out_features, in_features))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._packed: Any = None
        self._packed_key: tuple | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, kernel: str = "dynamic", reduce_range: bool = True) -> "Int8Linear":
        """Quantize an ``nn.Linear`` (masked or not); the original is left unchanged."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel, reduce_range)
        q, scale = quantize_per_channel(weight_of(linear, "weight"))
        layer.to(linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.scale.copy_(scale)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments, for :func:`torchslim.save`."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "kernel": self.kernel, "reduce_range": self.reduce_range}

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "Int8Linear":
        """Rebuild an empty layer from :meth:`torchslim_spec`; the weights come from the state dict."""
        return cls(**spec)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with (``int8 * scale``)."""
        return dequantize(self.weight, self.scale, dtype)

    def _use_kernel(self, x: torch.Tensor) -> bool:
        if self.kernel != "dynamic" or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if x.requires_grad or (self.training and torch.is_grad_enabled()):
            return False  # the int8 kernel has no backward; training sees the dequantized weight
        return dynamic_kernel() is not None

    def _packed_weight(self) -> Any:
        # rebuilt whenever a tensor it was packed from changed (load_state_dict, training the bias, ...)
        key = version_key((self.weight, self.scale, self.bias))
        if self._packed is None or self._packed_key != key:
            self._packed = prepack(self.weight.detach(), self.scale.detach(), self.bias)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(x):
            return torch.ops.quantized.linear_dynamic(x, self._packed_weight(), self.reduce_range)
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def __getstate__(self) -> dict[str, Any]:
        # the packed kernel weight is a cache (a TorchScript object): rebuilt on first use after a copy
        state = dict(self.__dict__)
        state["_packed"], state["_packed_key"] = None, None
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}"
                + ("" if self.reduce_range or self.kernel != "dynamic" else ", 8-bit activations"))


# ------------------------------------------------------------------------------------------- Conv
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class Int8Conv(nn.Module):
    """``nn.Conv1d``/``Conv2d``/``Conv3d`` (``padding_mode="zeros"``) with an int8 weight, weight-only.

    The forward dequantizes the weight and runs the float convolution: the model is 4x smaller on disk
    and in memory, with the float model's speed.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int], padding: Sequence[int] | str, dilation: Sequence[int], groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims={dims} must be 1, 2 or 3")
        self.dims, self.in_channels, self.out_channels, self.groups = int(dims), int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.weight = int8_parameter((out_channels, in_channels // groups, *self.kernel_size))
        self.register_buffer("scale", torch.ones(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_float(cls, conv: nn.modules.conv._ConvNd) -> "Int8Conv":
        """Quantize a Conv layer (masked or not); the original is left unchanged."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        dims = len(conv.kernel_size)
        layer = cls(dims, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
        q, scale = quantize_per_channel(weight_of(conv, "weight"))
        layer.to(conv.weight.device)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.scale.copy_(scale)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
        return layer

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments, for :func:`torchslim.save`."""
        return {"dims": self.dims, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None}

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "Int8Conv":
        """Rebuild an empty layer from :meth:`torchslim_spec`; the weights come from the state dict."""
        return cls(**spec)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with (``int8 * scale``)."""
        return dequantize(self.weight, self.scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _CONV[self.dims](x, self.dequantized_weight(x.dtype), bias, self.stride, self.padding,
                                self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, dims={self.dims}, weight-only int8")


# ------------------------------------------------------------------------------------------- LSTM
class Int8LSTM(Int8Recurrent):
    """``nn.LSTM`` with int8 weight matrices; ``kernel="weight-only"`` by default (see :mod:`.recurrent`).

    PyTorch's dynamic int8 LSTM kernel (``kernel="dynamic"``) measured 0.47x to 1.12x the speed of the
    float LSTM here (bench/quantize_rnn.py), so the default keeps float compute and gains 4x storage.
    """

    float_class = nn.LSTM
    default_kernel = "weight-only"


#: The module kinds this package puts into models (registered with torchslim for save/load).
MODULE_KINDS: tuple[type[nn.Module], ...] = (Int8Linear, Int8Conv, Int8LSTM, Int8GRU, Int8RNN)
