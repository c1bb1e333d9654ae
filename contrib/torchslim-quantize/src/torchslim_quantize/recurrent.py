"""int8 recurrent layers: ``Int8GRU``, ``Int8RNN`` and the base of ``Int8LSTM``, stored as int8.

Every weight matrix (``weight_ih_l*``, ``weight_hh_l*``, LSTM projections) is an int8 frozen parameter
with a float32 scale per output row; biases stay float. Two ways to compute, chosen per layer:

- ``kernel="dynamic"`` (GRU, LSTM): PyTorch's int8 dynamic-quantization RNN kernels
  (``torch.quantized_gru`` / ``torch.quantized_lstm`` over cell parameters built by
  ``quantized::make_quantized_cell_params_dynamic`` from FBGEMM/x86 packed weights): the input and
  recurrent products run int8 x int8 with activations quantized on the fly. The packed cell
  parameters are a cache built from the int8 tensors on first use and rebuilt when they change.
- ``kernel="weight-only"`` (GRU, LSTM, RNN): the float recurrence with the dequantized weights, run
  through :func:`torch.func.functional_call` on a parameterless copy of the float layer; only the int8
  copies persist.

The dynamic path serves inference on CPU in float32; in training with gradients, on other devices or
dtypes, or where the kernels are missing, the same stored weights run weight-only. The child ``rnn``
is an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` (without parameters) whichever path runs, so tools that look
for recurrent modules (MAC counting) see it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .kernels import dequantize, dynamic_kernel, int8_parameter, prepack, quantize_per_channel, version_key, weight_of

KERNELS = ("dynamic", "weight-only")


# ------------------------------------------------------------------------------------------- runners
class _Runner:
    """Mixin for a parameterless recurrent layer: ``cell_params`` given, it runs PyTorch's int8 kernel."""

    def forward(self, input: Any, hx: Any = None, cell_params: list[Any] | None = None) -> Any:
        if cell_params is None:
            return super().forward(input, hx)  # type: ignore[misc]
        return _run_dynamic(self, input, hx, cell_params)  # type: ignore[arg-type]


class GRURunner(_Runner, nn.GRU):
    """``nn.GRU`` that can also run the dynamic int8 GRU kernel."""


class LSTMRunner(_Runner, nn.LSTM):
    """``nn.LSTM`` that can also run the dynamic int8 LSTM kernel."""


class RNNRunner(_Runner, nn.RNN):
    """``nn.RNN`` (weight-only: PyTorch has no dynamic int8 kernel for a whole ``nn.RNN``)."""


RUNNERS: dict[type[nn.RNNBase], type[nn.RNNBase]] = {nn.GRU: GRURunner, nn.LSTM: LSTMRunner, nn.RNN: RNNRunner}


def _permute(hidden: Any, order: torch.Tensor | None) -> Any:
    if order is None:
        return hidden
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, order) for h in hidden)
    return hidden.index_select(1, order)


def _map(hidden: Any, fn: Any) -> Any:
    return tuple(fn(h) for h in hidden) if isinstance(hidden, tuple) else fn(hidden)


def _run_dynamic(rnn: nn.RNNBase, input: Any, hx: Any, params: list[Any]) -> tuple[Any, Any]:
    """One forward of ``rnn`` (GRU or LSTM) through ``torch.quantized_gru``/``torch.quantized_lstm``."""
    lstm = rnn.mode == "LSTM"
    batch_dim = 0 if rnn.batch_first else 1
    if isinstance(input, PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        max_batch, batched = int(batch_sizes[0]), True
    else:
        data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
        batched = input.dim() == 3
        if not batched:  # one unbatched sequence: as nn.GRU/nn.LSTM do, add the batch dim and drop it after
            data = input.unsqueeze(batch_dim)
            hx = None if hx is None else _map(hx, lambda h: h.unsqueeze(1))
        max_batch = data.size(batch_dim)
    directions = 2 if rnn.bidirectional else 1
    if hx is None:
        zeros = torch.zeros(rnn.num_layers * directions, max_batch, rnn.hidden_size, dtype=data.dtype,
                            device=data.device)
        hx = (zeros, zeros) if lstm else zeros
    else:
        hx = _permute(tuple(hx) if lstm else hx, sorted_indices)
    _check_args(rnn, data, hx, batch_sizes)
    # the kernels' two overloads: padded (..., batch_first) or packed (data, batch_sizes, ...); biases always given
    common = (params, True, rnn.num_layers, float(rnn.dropout), rnn.training, rnn.bidirectional)
    args = (data, hx, *common, rnn.batch_first) if batch_sizes is None else (data, batch_sizes, hx, *common)
    if lstm:
        result = torch.quantized_lstm(*args, dtype=torch.qint8, use_dynamic=True)
        output, hidden = result[0], (result[1], result[2])
    else:
        output, hidden = torch.quantized_gru(*args)[:2]
    if isinstance(input, PackedSequence):
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), _permute(hidden, unsorted_indices)
    if not batched:
        return output.squeeze(batch_dim), _map(hidden, lambda h: h.squeeze(1))
    return output, hidden


def _check_args(rnn: nn.RNNBase, data: torch.Tensor, hx: Any, batch_sizes: torch.Tensor | None) -> None:
    """nn.RNNBase.check_forward_args without its dtype check (this layer holds no float weights)."""
    dims = 2 if batch_sizes is not None else 3
    if data.dim() != dims:
        raise RuntimeError(f"input must have {dims} dimensions, got {data.dim()}")
    if data.size(-1) != rnn.input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {rnn.input_size}, "
                           f"got {data.size(-1)}")
    if isinstance(hx, tuple):
        rnn.check_hidden_size(hx[0], rnn.get_expected_hidden_size(data, batch_sizes), "Expected hidden[0] size {}, got {}")
        rnn.check_hidden_size(hx[1], rnn.get_expected_cell_size(data, batch_sizes), "Expected hidden[1] size {}, got {}")
    else:
        rnn.check_hidden_size(hx, rnn.get_expected_hidden_size(data, batch_sizes))


@functools.lru_cache(maxsize=1)
def recurrent_kernel() -> bool:
    """Whether PyTorch's dynamic int8 GRU and LSTM kernels run here (checked once on a tiny layer)."""
    if dynamic_kernel() is None:
        return False
    try:
        with torch.inference_mode(False), torch.no_grad():
            _probe()
    except Exception:  # noqa: BLE001 - any failure means "use the weight-only path"
        return False
    return True


def _probe() -> None:
    """Run a tiny GRU and LSTM through the dynamic kernels (raises where they do not run)."""
    for float_class in (nn.GRU, nn.LSTM):
        probe = type("Probe", (Int8Recurrent,), {"float_class": float_class})
        small = probe.from_float(float_class(4, 3), kernel="dynamic").eval()
        small.rnn(torch.randn(2, 1, 4), None, cell_params=small._cell_params())


# ------------------------------------------------------------------------------------------- layers
class Int8Recurrent(nn.Module):
    """Base of the int8 recurrent kinds: int8 weight matrices, float biases, a dynamic or weight-only kernel."""

    float_class: ClassVar[type[nn.RNNBase]]
    default_kernel: ClassVar[str] = "weight-only"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 kernel: str | None = None, reduce_range: bool = True, **extra: Any) -> None:
        super().__init__()
        kernel = self.default_kernel if kernel is None else kernel
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} must be 'dynamic' or 'weight-only'")
        if kernel == "dynamic" and self.float_class is nn.RNN:
            raise ValueError("kernel='dynamic': PyTorch has no dynamic int8 kernel for nn.RNN; use 'weight-only'")
        if kernel == "dynamic" and extra.get("proj_size"):
            raise ValueError(f"kernel='dynamic' does not run an LSTM with proj_size={extra['proj_size']}; "
                             f"use 'weight-only'")
        rnn = RUNNERS[self.float_class](input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                                        dropout=dropout, bidirectional=bidirectional, device="meta", **extra)
        self.names = list(rnn._flat_weights_names)
        shapes = {n: tuple(getattr(rnn, n).shape) for n in self.names}
        for n in self.names:
            delattr(rnn, n)
        rnn._flat_weights = [None] * len(self.names)
        self.rnn = rnn
        self.kernel, self.reduce_range = kernel, bool(reduce_range)
        for n in self.names:
            if n.startswith("weight"):
                setattr(self, n, int8_parameter(shapes[n]))
                self.register_buffer(f"{n}_scale", torch.ones(shapes[n][0]))
            else:
                setattr(self, n, nn.Parameter(torch.zeros(shapes[n])))
        self._cells: list[Any] | None = None
        self._cells_key: tuple | None = None

    @classmethod
    def from_float(cls, layer: nn.RNNBase, kernel: str | None = None, reduce_range: bool = True) -> "Int8Recurrent":
        """Quantize a float recurrent layer of ``cls.float_class`` (masked or not); the original is unchanged."""
        if not isinstance(layer, cls.float_class):
            raise TypeError(f"{cls.__name__}.from_float takes an nn.{cls.float_class.__name__}, "
                            f"got {type(layer).__name__}")
        new = cls(**rnn_args(layer), kernel=kernel, reduce_range=reduce_range)
        new.to(next(layer.parameters()).device)
        with torch.no_grad():
            for n in new.names:
                value = weight_of(layer, n)
                if n.startswith("weight"):
                    q, scale = quantize_per_channel(value)
                    getattr(new, n).copy_(q)
                    getattr(new, f"{n}_scale").copy_(scale)
                else:
                    getattr(new, n).copy_(value)
        return new

    def torchslim_spec(self) -> dict[str, Any]:
        """Constructor arguments, for :func:`torchslim.save`."""
        return {**rnn_args(self.rnn), "kernel": self.kernel, "reduce_range": self.reduce_range}

    @classmethod
    def from_torchslim_spec(cls, spec: dict[str, Any]) -> "Int8Recurrent":
        """Rebuild an empty layer from :meth:`torchslim_spec`; the weights come from the state dict."""
        return cls(**spec)

    def int8_weights(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, int8 tensor, scale)`` of every weight matrix."""
        return [(n, getattr(self, n), getattr(self, f"{n}_scale")) for n in self.names if n.startswith("weight")]

    def dequantized(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every parameter of the float layer as this layer computes with it (weights ``int8 * scale``)."""
        out = {}
        for n in self.names:
            value = getattr(self, n)
            out[n] = dequantize(value, getattr(self, f"{n}_scale"), dtype) if n.startswith("weight") else value.to(dtype)
        return out

    # ----------------------------------------------------------------------------------- dynamic kernel
    def _use_kernel(self, input: Any) -> bool:
        data = input.data if isinstance(input, PackedSequence) else input
        if self.kernel != "dynamic" or not isinstance(data, torch.Tensor):
            return False
        if data.device.type != "cpu" or data.dtype != torch.float32:
            return False
        if data.requires_grad or (self.training and torch.is_grad_enabled()):
            return False  # the int8 kernels have no backward; training sees the dequantized weights
        return recurrent_kernel()

    def _cell_params(self) -> list[Any]:
        """The kernel's packed cell parameters, one per layer and direction (rebuilt when a tensor changed)."""
        tensors = [getattr(self, n) for n in self.names] + [getattr(self, f"{n}_scale") for n, _, _ in self.int8_weights()]
        key = version_key(tensors)
        if self._cells is not None and self._cells_key == key:
            return self._cells
        rnn, cells = self.rnn, []
        rows = 4 if rnn.mode == "LSTM" else 3
        for layer in range(rnn.num_layers):
            for suffix in ("", "_reverse")[: 2 if rnn.bidirectional else 1]:
                packed, biases = [], []
                for part in ("ih", "hh"):
                    n = f"weight_{part}_l{layer}{suffix}"
                    bias = getattr(self, f"bias_{part}_l{layer}{suffix}").detach().float() if rnn.bias \
                        else torch.zeros(rows * rnn.hidden_size)
                    packed.append(prepack(getattr(self, n).detach(), getattr(self, f"{n}_scale").detach(), bias))
                    biases.append(bias)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cells.append(torch.ops.quantized.make_quantized_cell_params_dynamic(
                        packed[0], packed[1], biases[0], biases[1], self.reduce_range))
        self._cells, self._cells_key = cells, key
        return cells

    def forward(self, input: Any, hx: Any = None) -> Any:
        self.rnn.train(self.training)
        if self._use_kernel(input):
            return self.rnn(input, hx, cell_params=self._cell_params())
        data = input.data if isinstance(input, PackedSequence) else input
        args = (input,) if hx is None else (input, hx)
        try:
            return torch.func.functional_call(self.rnn, self.dequantized(data.dtype), args, strict=False)
        finally:
            self.rnn._flat_weights = [None] * len(self.names)  # do not keep the float copies alive

    def __getstate__(self) -> dict[str, Any]:
        # the packed cell parameters are a cache (TorchScript objects): rebuilt on first use after a copy
        state = dict(self.__dict__)
        state["_cells"], state["_cells_key"] = None, None
        return state

    def extra_repr(self) -> str:
        compute = "int8 dynamic kernel" if self.kernel == "dynamic" else "weight-only int8"
        return compute + ("" if self.reduce_range or self.kernel != "dynamic" else ", 8-bit activations")


class Int8GRU(Int8Recurrent):
    """``nn.GRU`` with int8 weight matrices; ``kernel="dynamic"`` by default (PyTorch's int8 GRU kernel).

    >>> layer = Int8GRU.from_float(nn.GRU(8, 16, batch_first=True)).eval()
    >>> layer(torch.randn(2, 5, 8))[0].shape
    torch.Size([2, 5, 16])
    """

    float_class = nn.GRU
    default_kernel = "dynamic"


class Int8RNN(Int8Recurrent):
    """``nn.RNN`` (tanh or relu) with int8 weight matrices, weight-only (PyTorch has no int8 kernel for it)."""

    float_class = nn.RNN
    default_kernel = "weight-only"


def rnn_args(layer: nn.RNNBase) -> dict[str, Any]:
    """The constructor arguments of a recurrent layer (``proj_size`` for LSTM, ``nonlinearity`` for RNN)."""
    args = {"input_size": layer.input_size, "hidden_size": layer.hidden_size, "num_layers": layer.num_layers,
            "bias": layer.bias, "batch_first": layer.batch_first, "dropout": float(layer.dropout),
            "bidirectional": layer.bidirectional}
    if isinstance(layer, nn.LSTM):
        args["proj_size"] = layer.proj_size
    if isinstance(layer, nn.RNN):
        args["nonlinearity"] = layer.nonlinearity
    return args
