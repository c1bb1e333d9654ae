"""Per-layer rows of the ``channel`` method's report: channels and MACs before and after pruning."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim import measure
from torchslim.batches import call_model
from torchslim.targets import HFConv1D, is_internal

#: Layers listed in the report (those whose channel counts Torch-Pruning changes).
REPORTED: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, HFConv1D, nn.MultiheadAttention, nn.RNNBase)


@dataclass(frozen=True)
class LayerShape:
    """A layer's kind, output and input channel counts, and its MACs in one forward pass."""

    kind: str
    out_channels: int
    in_channels: int
    macs: int


def channels(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` channel counts of a reported layer (embed_dim for attention, hidden for RNNs)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, HFConv1D):  # weight [in, out]
        return int(module.weight.shape[1]), int(module.weight.shape[0])
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    if isinstance(module, nn.RNNBase):
        return module.hidden_size, module.input_size
    raise TypeError(type(module).__name__)  # pragma: no cover


def _counting_context() -> Any:
    # The fused attention kernels have no FLOP formula; measure switches them off while counting.
    switch = getattr(measure, "_mha_fastpath_disabled", None)
    return switch() if switch is not None else contextlib.nullcontext()


def layer_shapes(model: nn.Module, inputs: tuple) -> dict[str, LayerShape]:
    """Channels and MACs of every reported layer that runs on ``inputs`` (MACs as count_macs counts)."""
    formulas = getattr(measure, "_custom_formulas", dict)()
    counter = FlopCounterMode(display=False, custom_mapping=formulas)
    macs: dict[str, int] = {}
    starts: dict[str, list[int]] = {}
    handles = []

    def hooks(name: str) -> tuple[Any, Any]:
        def pre(module: nn.Module, args: Any) -> None:
            starts.setdefault(name, []).append(counter.get_total_flops())

        def post(module: nn.Module, args: Any, output: Any) -> None:
            macs[name] = macs.get(name, 0) + (counter.get_total_flops() - starts[name].pop()) // 2

        return pre, post

    layers = {n: m for n, m in model.named_modules() if n and not is_internal(n) and isinstance(m, REPORTED)}
    for name, module in layers.items():
        pre, post = hooks(name)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with measure.eval_mode(model), torch.no_grad(), _counting_context(), counter:
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, module in layers.items():
        if name not in macs:  # never ran (e.g. out_proj is used functionally by its attention)
            continue
        cout, cin = channels(module)
        out[name] = LayerShape(type(module).__name__, cout, cin, macs[name])
    if any(isinstance(m, nn.RNNBase) for m in layers.values()):
        # The counter cannot see recurrent kernels on every backend; use measure's formula for them.
        shapes = measure.module_input_shapes(model, inputs)
        for name, module in layers.items():
            if isinstance(module, nn.RNNBase) and name in out and name in shapes:
                tokens = math.prod(shapes[name]) // module.input_size
                item = out[name]
                out[name] = LayerShape(item.kind, item.out_channels, item.in_channels,
                                       measure.rnn_macs(module, tokens))
    return out


def report_rows(before: dict[str, LayerShape], after: dict[str, LayerShape], total_after: int) -> list[dict]:
    """One row per reported layer: channels and MACs before/after, and its share of the MACs after."""
    rows = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        rows.append({
            "layer": name,
            "type": old.kind,
            "channels_before": old.out_channels,
            "channels_after": new.out_channels,
            "in_channels_before": old.in_channels,
            "in_channels_after": new.in_channels,
            "macs_before": old.macs,
            "macs_after": new.macs,
            "macs_share": round(new.macs / total_after, 4) if total_after else 0.0,
        })
    return rows
