"""The ``int8`` compress method: replace Linear, Conv, GRU, LSTM and RNN layers by the int8 kinds of :mod:`.modules`."""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import torchslim
from torchslim.recipe import Targets

from .modules import MODULE_KINDS, Int8Conv, Int8GRU, Int8Linear, Int8LSTM, Int8RNN, dequantize, dynamic_kernel
from .recurrent import Int8Recurrent, recurrent_kernel

#: Layer types the method targets when a recipe's targets name no types.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GRU, nn.LSTM, nn.RNN)


class Int8Options(BaseModel):
    """Settings of the ``int8`` compress method."""

    model_config = ConfigDict(extra="forbid")

    linear: Literal["dynamic", "weight-only", "skip"] = Field(
        "dynamic",
        description="Linear layers: 'dynamic' (int8 weights and int8 activations quantized per batch, "
                    "PyTorch's FBGEMM/x86 kernel on CPU), 'weight-only' (int8 storage, float compute) or 'skip'")
    reduce_range: bool = Field(
        True,
        description="dynamic Linear, GRU and LSTM kernels: quantize activations to 7 bits, as PyTorch does on x86; "
                    "false uses 8 bits, more accurate (MiniLM cosine 0.978 -> 0.993 in bench/quantize.py) but "
                    "products may saturate on CPUs without VNNI")
    conv: Literal["weight-only", "skip"] = Field(
        "weight-only", description="Conv1d/2d/3d layers: 'weight-only' (int8 storage, float compute) or 'skip'")
    gru: Literal["dynamic", "weight-only", "skip"] = Field(
        "dynamic",
        description="GRU layers: 'dynamic' (int8 weight matrices and activations, PyTorch's dynamic int8 GRU "
                    "kernel; 1.3x-1.5x faster than float here, bench/quantize_rnn.py), 'weight-only' or 'skip'")
    lstm: Literal["dynamic", "weight-only", "skip"] = Field(
        "weight-only",
        description="LSTM layers: 'weight-only' (int8 weight matrices, float compute), 'dynamic' (PyTorch's "
                    "dynamic int8 LSTM kernel: measured 0.5x-1.1x the float LSTM's speed here, so not the "
                    "default) or 'skip'")
    rnn: Literal["weight-only", "skip"] = Field(
        "weight-only",
        description="RNN (tanh/relu) layers: 'weight-only' (PyTorch has no int8 kernel for nn.RNN) or 'skip'")
    min_weights: int = Field(
        0, ge=0, description="leave layers with fewer weights than this in float (tiny layers gain nothing)")


def _is_kind(module: nn.Module) -> bool:
    return callable(getattr(module, "torchslim_spec", None)) and callable(getattr(module, "from_torchslim_spec", None))


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, module)


def _weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if isinstance(module, nn.RNNBase):
        return [(n, getattr(module, n).detach()) for n in module._flat_weights_names if n.startswith("weight")]
    return [("weight", module.weight.detach())]


#: Parents whose forward reads their Linear children's float weights directly (fused kernels).
READS_CHILD_WEIGHTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _convert(module: nn.Module, parent: nn.Module | None, opts: Int8Options) -> tuple[nn.Module | None, str]:
    """The int8 replacement of ``module`` and its mode, or ``(None, reason)`` to leave it alone."""
    if isinstance(parent, READS_CHILD_WEIGHTS):
        return None, f"its parent {type(parent).__name__} reads the float weight directly (fused path)"
    if isinstance(module, nn.Linear):
        if opts.linear == "skip":
            return None, "linear: skip"
        return Int8Linear.from_float(module, kernel=opts.linear, reduce_range=opts.reduce_range), opts.linear
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        if opts.conv == "skip":
            return None, "conv: skip"
        if module.padding_mode != "zeros":
            return None, f"padding_mode={module.padding_mode!r}; only 'zeros' is supported"
        return Int8Conv.from_float(module), "weight-only"
    for float_class, kind, option in ((nn.GRU, Int8GRU, "gru"), (nn.LSTM, Int8LSTM, "lstm"), (nn.RNN, Int8RNN, "rnn")):
        if isinstance(module, float_class):
            mode = getattr(opts, option)
            if mode == "skip":
                return None, f"{option}: skip"
            if mode == "dynamic" and getattr(module, "proj_size", 0):
                return None, f"{option}: dynamic does not run an LSTM with proj_size; use weight-only"
            return kind.from_float(module, kernel=mode, reduce_range=opts.reduce_range), mode
    return None, f"{type(module).__name__} has no int8 form here"


def _int8_weights(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(module, Int8Recurrent):
        return [(q, scale) for _, q, scale in module.int8_weights()]
    return [(module.weight, module.scale)]


def _compute(module: nn.Module, mode: str) -> str:
    """What a converted layer computes with, and why that was chosen (for the step report)."""
    if mode == "weight-only":
        if isinstance(module, Int8LSTM):
            return ("float (int8 storage): PyTorch's dynamic int8 LSTM kernel measured 0.5x-1.1x the float "
                    "LSTM's speed here; lstm: dynamic uses it")
        if isinstance(module, Int8RNN):
            return "float (int8 storage): PyTorch has no int8 kernel for nn.RNN"
        return "float (int8 storage)"
    kernel = recurrent_kernel() if isinstance(module, Int8Recurrent) else dynamic_kernel() is not None
    if not kernel:
        return "float (int8 storage): PyTorch's dynamic int8 kernel does not run in this torch build"
    what = {Int8GRU: "GRU kernel", Int8LSTM: "LSTM kernel"}.get(type(module), "Linear kernel")
    return f"int8 x int8, PyTorch's dynamic int8 {what} ({dynamic_kernel()}) in inference on CPU"


def quantize(model: nn.Module, options: Int8Options | dict[str, Any] | None = None, *,
             targets: Targets | dict[str, Any] | None = None) -> torchslim.StepResult:
    """Quantize ``model`` in place as the ``int8`` method does and return a :class:`torchslim.StepResult`.

    Every replacement is built (and checked) before the first one is swapped in, so an error leaves
    the model as it was. Layers inside other torchslim module kinds (e.g. low-rank factors) are left
    alone: a kind is saved and rebuilt as a whole.
    """
    opts = options if isinstance(options, Int8Options) else Int8Options.model_validate(options or {})
    targets = Targets.model_validate(targets) if isinstance(targets, dict) else targets
    kinds = tuple({type(m) for m in model.modules() if _is_kind(m)} | set(MODULE_KINDS))
    owners = [(path, type(m).__name__) for path, m in model.named_modules() if path and isinstance(m, kinds)]
    skipped = []
    for name, module in model.named_modules():
        owner = next(((path, kind) for path, kind in owners if name.startswith(path + ".")), None)
        if owner is not None and isinstance(module, DEFAULT_TYPES):
            skipped.append((name, f"inside {owner[0]!r}, a {owner[1]} (a torchslim module kind, saved and "
                                  f"rebuilt as a whole)"))
    selected = torchslim.select_modules(model, targets, DEFAULT_TYPES, skip_inside=kinds)
    swaps: list[tuple[str, nn.Module]] = []
    report: list[dict[str, Any]] = []
    for name, module in selected:
        weights = _weights(module)
        for tensor_name, tensor in weights:
            if not bool(torch.isfinite(tensor).all()):
                raise torchslim.ModelError(f"int8: layer {name!r} has NaN or inf in {tensor_name}; "
                                           f"fix the model before quantizing")
        count = sum(t.numel() for _, t in weights)
        if count < opts.min_weights:
            skipped.append((name, f"{count} weights < min_weights={opts.min_weights}"))
            continue
        parent_path = name.rpartition(".")[0]
        new, mode = _convert(module, model.get_submodule(parent_path) if parent_path else model, opts)
        if new is None:
            skipped.append((name, mode))
            continue
        error = max(float((dequantize(q, s) - t.float()).abs().max() / t.abs().max().clamp_min(1e-12))
                    for (q, s), (_, t) in zip(_int8_weights(new), weights))
        before = sum(t.numel() * t.element_size() for _, t in weights)
        after = sum(q.numel() * q.element_size() + s.numel() * s.element_size() for q, s in _int8_weights(new))
        new.train(module.training)
        swaps.append((name, new))
        report.append({"layer": name, "type": type(module).__name__.removeprefix("Parametrized"), "int8": mode,
                       "compute": _compute(new, mode), "weights": count, "weight_bytes": before, "int8_bytes": after,
                       "max_rel_error": round(error, 6)})
    if not swaps:
        raise torchslim.ModelError(
            "int8: no Linear, Conv, GRU, LSTM or RNN layer to quantize among the targeted modules"
            + (f" ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]}, ...)" if skipped else "")
            + "; check 'targets' and the linear/conv/gru/lstm/rnn options")
    for name, new in swaps:
        _set_module(model, name, new)
    before = sum(r["weight_bytes"] for r in report)
    after = sum(r["int8_bytes"] for r in report)
    info = {"layers": len(swaps), "weight_bytes": before, "int8_bytes": after,
            "compression": round(before / after, 3), "dynamic_kernel": dynamic_kernel() or "unavailable",
            "recurrent_kernel": "available" if recurrent_kernel() else "unavailable"}
    return torchslim.StepResult(model=model, report=report, skipped=skipped, info=info)


class Int8Quantization:
    """The ``int8`` compress method: dynamic int8 Linear and GRU, weight-only int8 Conv, LSTM and RNN (see README)."""

    name = "int8"
    Options = Int8Options
    default_types = DEFAULT_TYPES

    @torchslim.hookimpl
    def compress(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        return quantize(model, step.options, targets=step.targets)

    @torchslim.hookimpl
    def register_module_kinds(self, register: Callable[[type], None]) -> None:
        for kind in MODULE_KINDS:
            register(kind)
