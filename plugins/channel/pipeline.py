"""The ``channel`` pipeline: :func:`prune_channels` ranks channels, removes them on a copy, checks and reports."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.batches import as_inputs, call_model, has_inputs, tensors_in, to_device
from torchslim.context import RunContext
from torchslim.errors import DataError, ModelError
from torchslim.measure import count_macs, count_params, eval_mode
from torchslim.recipe import Targets
from torchslim.surgery import module_kind_types

from .faults import run_pruned
from .graph import Outcome, prune_model, require_torch_pruning
from .options import ChannelOptions
from .report import channels, layer_shapes, report_rows
from .transformers import prune_blocks, transformer_blocks

#: Bisection steps of the ``mac_ratio`` search (the ratio is found to within 1/2**7 of the range).
SEARCH_STEPS = 7


def prune_channels(model: nn.Module, example_inputs: Any, options: ChannelOptions | dict | None = None, *,
                   targets: Targets | dict | None = None, context: RunContext | None = None,
                   where: str = "channel") -> torchslim.StepResult:
    """Remove whole channels of ``model``'s targeted layers and return the step result (a new model).

    ``model`` is left as it was: the pruned model is a copy (``result.model``). ``example_inputs`` are
    traced once to find coupled layers; ``context`` supplies data for ``taylor`` importance and a
    fine-tuning runner for ``finetune_between``.
    """
    opts = options if isinstance(options, ChannelOptions) else ChannelOptions.model_validate(options or {})
    targets = Targets.model_validate(targets) if isinstance(targets, dict) else targets
    context = context or RunContext(example_inputs=example_inputs)
    tp = require_torch_pruning()
    inputs = _inputs(example_inputs, context.device, where)
    _check_plain(model, where)
    with eval_mode(model), torch.no_grad():
        reference = call_model(model, inputs)
    before = layer_shapes(model, inputs)
    macs_before, params_before = count_macs(model, inputs), count_params(model)

    ratio = opts.ratio
    if opts.mac_ratio is not None:
        ratio = _ratio_for_macs(model, inputs, opts, targets, context, where, macs_before)
    pruned = copy.deepcopy(model)  # on failure the caller's model is left as it was
    outcome = _prune(pruned, inputs, ratio, opts, targets, context, where, finetune=True)

    out = run_pruned(pruned, inputs, where, lambda name: _change(before, pruned, name))
    _check_outputs(reference, out, where)
    after = layer_shapes(pruned, inputs)
    macs_after = count_macs(pruned, inputs)
    rows = report_rows(before, after, macs_after)
    changed = [r["layer"] for r in rows
               if (r["channels_before"], r["in_channels_before"]) != (r["channels_after"], r["in_channels_after"])]
    for message in outcome.warnings:
        context.logger.warning("%s: %s", where, message)
    info = {
        "ratio": round(ratio, 4), "scope": opts.scope, "importance": opts.importance,
        "macs_before": macs_before, "macs_after": macs_after,
        "mac_ratio": round(macs_after / macs_before, 4) if macs_before else 1.0,
        "params_before": params_before, "params_after": count_params(pruned),
        "layers_changed": len(changed), "groups_pruned": outcome.groups,
        "engine": outcome.engine, "torch_pruning": getattr(tp, "__version__", "?"),
    }
    if outcome.warnings:
        info["torch_pruning_warnings" if outcome.engine == "torch-pruning" else "notes"] = outcome.warnings
    return torchslim.StepResult(model=pruned, report=rows, skipped=outcome.skipped, info=info)



def _inputs(inputs: Any, device: Any, where: str) -> tuple | dict:
    if not has_inputs(inputs):
        raise DataError(
            f"{where}: channel pruning traces one forward pass and needs example inputs; pass "
            f"example_inputs=(x,) (or train_data/eval_data) to Engine.run")
    return to_device(as_inputs(inputs), device)


def _check_plain(model: nn.Module, where: str) -> None:
    masked = [n for n, m in model.named_modules() if n and parametrize.is_parametrized(m)]
    if masked:
        raise ModelError(
            f"{where}: layers {', '.join(masked[:4])}{' ...' if len(masked) > 4 else ''} carry "
            f"parametrizations (pruning masks of an earlier compress step); channel pruning rewrites "
            f"weights and needs plain ones. Put the channel step before the compress step in the recipe.")

def _prune(model: nn.Module, inputs: tuple, ratio: float, opts: Any, targets: Targets | None, context: Any,
           where: str, *, finetune: bool) -> Outcome:
    blocks = transformer_blocks(model, where, opts.ignore)
    if blocks:  # heads and MLP widths by direct slicing; the rest of the model keeps its widths
        return prune_blocks(model, blocks, ratio, opts, targets, context, where,
                            finetune_between=opts.finetune_between if finetune else None)
    with eval_mode(model):
        return prune_model(model, inputs, ratio, opts, targets, context, where,
                           finetune_between=opts.finetune_between if finetune else None,
                           skip_inside=module_kind_types(model))

def _ratio_for_macs(model: nn.Module, inputs: tuple, opts: Any, targets: Targets | None, context: Any,
                    where: str, macs_before: int) -> float:
    """The smallest channel ratio whose pruned model keeps at most ``mac_ratio`` of the MACs."""
    budget = opts.mac_ratio * macs_before

    def macs_at(ratio: float) -> int:
        trial = copy.deepcopy(model)
        _prune(trial, inputs, ratio, opts, targets, context, where, finetune=False)
        return count_macs(trial, inputs)

    high = opts.max_layer_ratio
    reached = macs_at(high)
    if reached > budget:
        raise ModelError(
            f"{where}: mac_ratio={opts.mac_ratio} cannot be reached: at ratio {high} (max_layer_ratio) "
            f"the model keeps {reached / macs_before:.3f} of its MACs, since protected and ignored "
            f"layers keep their channels; raise mac_ratio, raise max_layer_ratio, or protect fewer layers")
    low = 0.0
    for _ in range(SEARCH_STEPS):
        mid = (low + high) / 2
        if macs_at(mid) <= budget:
            high = mid
        else:
            low = mid
    return high

def _change(before: dict, pruned: nn.Module, name: str) -> str:
    old = before.get(name)
    if old is None:
        return ""
    out, into = channels(pruned.get_submodule(name))
    return f"out channels {old.out_channels} -> {out}, in {old.in_channels} -> {into}"

def _check_outputs(reference: Any, output: Any, where: str) -> None:
    old = [tuple(t.shape) for t in tensors_in(reference)]
    new = [tuple(t.shape) for t in tensors_in(output)]
    if old != new:
        raise ModelError(
            f"{where}: pruning changed the model's output shapes from {old} to {new}; the layer producing "
            f"the output was not recognised. Name it in 'ignore' (e.g. ignore: ['fc']).")
