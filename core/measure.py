"""Measure a model: parameters, non-zeros, MACs, latency and the input shape of every module.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` (``MACs = FLOPs / 2``; the counter
counts multiply-accumulate work of convolutions, matrix products and attention), completed where
the counter has no formula:

- recurrent modules (``nn.RNN``/``nn.LSTM``/``nn.GRU``): the counter sees nothing on CPU for LSTM
  (``aten.mkldnn_rnn_layer``) or on CUDA (``aten._cudnn_rnn``), so their MACs come from the standard
  formula (see :func:`rnn_macs`) on every backend;
- ``F.scaled_dot_product_attention`` on CPU (``aten._scaled_dot_product_flash_attention_for_cpu``),
  counted with the counter's own attention formula;
- the fused "fast path" of ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` in eval mode is
  switched off while counting, so their projections and attention are seen as the ops above.

Elementwise work (activations, normalisation, pooling, additions, biases) is not counted, which is
the usual convention (fvcore, ptflops). Pruning masks do not reduce MACs: masked weights are dense.

>>> from torchslim.zoo import MLP
>>> count_macs(MLP((64, 32, 10)), (torch.zeros(1, 64),))
2368
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .batches import as_inputs, call_model, describe_inputs, first_tensor, to_device
from .errors import DataError
from .surgery import model_device

__all__ = [
    "count_macs", "count_nonzeros", "count_params", "effective_tensors", "eval_mode", "measure_latency",
    "mha_fastpath_disabled", "module_input_shapes", "rnn_macs",
]

#: Gate count per recurrent mode: how many ``hidden``-sized blocks ``weight_ih`` stacks.
_RNN_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# --------------------------------------------------------------------------- parameters
def effective_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every unique parameter as the forward pass sees it.

    A parametrized tensor (``torch.nn.utils.parametrize``, e.g. a pruning mask) is yielded once, as
    its effective value ``getattr(module, name)`` under the name ``module.name``; its
    ``parametrizations.<name>.original`` tensors are not yielded. Shared (tied) parameters are
    yielded once. Computed without gradient tracking.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for tensor_name, plist in module.parametrizations.items():
                # a tied weight masked in two modules has two lists sharing one `original`
                originals = {id(p) for p in plist.parameters()}
                if id(plist) in seen or (originals and originals <= seen):
                    continue
                seen.add(id(plist))
                seen.update(id(p) for p in plist.parameters())
                yield (f"{module_name}.{tensor_name}" if module_name else tensor_name), getattr(module, tensor_name)
        for name, param in model.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                yield name, param


def count_params(model: nn.Module) -> int:
    """The number of unique parameters; a parametrized weight counts once, with its effective shape.

    >>> count_params(nn.Linear(4, 3))
    15
    """
    carried = _carried(model, "params")
    return carried if carried is not None else sum(tensor.numel() for _, tensor in effective_tensors(model))


def count_nonzeros(model: nn.Module) -> int:
    """The number of non-zero parameter values, with parametrizations (masks) applied.

    >>> layer = nn.Linear(2, 2)
    >>> _ = layer.weight.data.zero_()
    >>> count_nonzeros(layer)  # only the bias is left
    2
    """
    carried = _carried(model, "nonzeros")
    return carried if carried is not None else sum(int(torch.count_nonzero(tensor))
                                                   for _, tensor in effective_tensors(model))


def _carried(model: nn.Module, count: str) -> int | None:
    """A count a deployed model carries from the model it was built from (its weights sit in its artifact)."""
    counts = getattr(model, "torchslim_counts", None)
    return int(counts[count]) if isinstance(counts, dict) and count in counts else None


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every module's own training flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _as_call(inputs: Any) -> Any:
    """Normalise example inputs (:func:`~torchslim.batches.as_inputs`): a tensor becomes a 1-tuple, a
    mapping (dict, ``BatchEncoding``) a dict of keyword inputs."""
    if isinstance(inputs, (torch.Tensor, tuple, list, Mapping)):
        return as_inputs(inputs)
    raise DataError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs; "
        f"got {type(inputs).__name__}"
    )


def _run(model: nn.Module, inputs: Any, purpose: str) -> Any:
    """Call ``model`` on ``inputs``; a failure becomes a :class:`DataError` naming the input shapes."""
    try:
        return call_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here means the inputs do not fit the model
        raise DataError(
            f"{purpose}: the model failed on example_inputs {describe_inputs(inputs)}: {type(exc).__name__}: {exc}; "
            f"pass example_inputs=... that the model's forward accepts"
        ) from exc


def _prepare(model: nn.Module, example_inputs: Any) -> Any:
    inputs = _as_call(example_inputs)
    device = model_device(model, default=None)
    return to_device(inputs, device) if device is not None else inputs


# --------------------------------------------------------------------------- MACs
def rnn_macs(module: nn.RNNBase, tokens: int) -> int:
    """MACs of a recurrent module for ``tokens`` = time steps x batch (packed: total elements).

    Per token, layer and direction: ``gates * hidden * (in + h)``, plus ``hidden * proj`` for an
    LSTM projection, where ``gates`` is 1 (RNN), 3 (GRU) or 4 (LSTM), ``h`` the recurrent state size
    (``proj_size`` or ``hidden_size``) and ``in`` the layer input size (``input_size`` for layer 0,
    ``directions * h`` above it).
    """
    gates = _RNN_GATES[module.mode]
    hidden = module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    state = proj or hidden
    directions = 2 if module.bidirectional else 1
    total = 0
    for layer in range(module.num_layers):
        layer_in = module.input_size if layer == 0 else directions * state
        per_direction = gates * hidden * (layer_in + state) + (hidden * proj if proj else 0)
        total += directions * per_direction
    return total * tokens


def _rnn_tokens(module: nn.RNNBase, inputs: tuple) -> int:
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.data.shape[0])
    return x.numel() // module.input_size


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_formulas() -> dict:
    """FLOP formulas for ops the counter's registry lacks (only those this torch build has)."""
    formulas = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        formulas[op] = _sdpa_cpu_flops
    return formulas


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Switch off the fused ``nn.MultiheadAttention``/``TransformerEncoderLayer`` fast path for the block.

    The fused kernels have no FLOP formula and hide their projections from forward hooks; the unfused
    path computes the same products with ops the counter knows, through the child modules.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulate operations of one forward pass of ``model`` on ``example_inputs``.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs; it is
    moved to the model's device. The model runs once in eval mode without gradients; its training
    flags are restored afterwards and nothing in it changes. See the module docstring for what is
    counted. Raises :class:`~torchslim.DataError` when the model cannot run on the inputs.
    """
    carried = _carried(model, "macs")
    if carried is not None:
        return carried
    inputs = _prepare(model, example_inputs)
    counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
    # Recurrent modules: drop what the counter saw inside them (backend-dependent) and add the formula.
    inside = {"counted": 0, "formula": 0}
    starts: list[int] = []

    def before(module: nn.Module, args: tuple) -> None:
        starts.append(counter.get_total_flops())

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        inside["counted"] += counter.get_total_flops() - starts.pop()
        inside["formula"] += rnn_macs(module, _rnn_tokens(module, args))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase) and module.mode in _RNN_GATES:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        with eval_mode(model), torch.no_grad(), mha_fastpath_disabled(), counter:
            _run(model, inputs, "count_macs")
    finally:
        for handle in handles:
            handle.remove()
    return (counter.get_total_flops() - inside["counted"]) // 2 + inside["formula"]


# --------------------------------------------------------------------------- latency
def measure_latency(model: nn.Module, example_inputs: Any, runs: int = 20, warmup: int = 3,
                    threads: int | None = None) -> float:
    """Median wall time in milliseconds of ``runs`` forward passes, after ``warmup`` untimed ones.

    Runs in eval mode under :func:`torch.inference_mode` (training flags are restored afterwards).
    With ``threads``, :func:`torch.set_num_threads` is set for the measurement and restored after.
    On CUDA the device is synchronised around every timed run.
    """
    if runs < 1:
        raise ValueError(f"runs={runs} must be >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 (or None to keep the current setting)")
    inputs = _prepare(model, example_inputs)
    device = model_device(model, default=None)
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    previous_threads = torch.get_num_threads()
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                _run(model, inputs, "measure_latency")
            for _ in range(runs):
                sync()
                start = time.perf_counter()
                _run(model, inputs, "measure_latency")
                sync()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return statistics.median(times) * 1000.0


# --------------------------------------------------------------------------- shapes
def module_input_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """The shape of the first tensor input of every module in one forward pass, by qualified name.

    The root module is ``""``. A module called several times keeps its first call's shape; modules
    that never run, or get no tensor, are absent. Parametrization internals are left out. The
    model runs in eval mode without gradients.

    >>> module_input_shapes(nn.Sequential(nn.Linear(4, 2)), torch.zeros(3, 4))
    {'': (3, 4), '0': (3, 4)}
    """
    inputs = _prepare(model, example_inputs)
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name in shapes:
                return
            tensor = first_tensor(list(args) + list(kwargs.values()))
            if tensor is not None:
                shapes[name] = tuple(tensor.shape)
        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(name), with_kwargs=True)
        for name, module in model.named_modules()
        if ".parametrizations." not in f".{name}."
    ]
    try:
        with eval_mode(model), torch.no_grad():
            _run(model, inputs, "module_input_shapes")
    finally:
        for handle in handles:
            handle.remove()
    return shapes
