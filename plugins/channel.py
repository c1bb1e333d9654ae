"""Built-in structured channel pruning: accelerate method ``channel``.

Whole output channels (conv filters, linear neurons, attention head dims) are ranked by an importance
criterion and removed for real: the model that comes out is a plain ``nn.Module`` whose standard
layers are smaller, so it runs faster on any dense hardware and saves/loads like any other model.
Every coupled tensor shrinks with the channel (the BatchNorm after it, the consumers' input columns,
both sides of residual additions, concatenations, grouped and depthwise convs, attention heads);
Torch-Pruning's dependency graph finds them. It is an optional extra: ``pip install 'torchslim[prune]'``.

Recipe::

    steps:
      - accelerate: {method: channel, ratio: 0.5, importance: l2, round_to: 8}
      - finetune:   {method: sgd, epochs: 3, lr: 0.01}
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.batches import call_model, to_device
from torchslim.errors import DataError, ModelError
from torchslim.measure import count_macs, count_params, eval_mode

from ._channel_faults import run_pruned
from ._channel_prune import (
    DEFAULT_TYPES, INSTALL_HINT, Outcome, flat_tensors, prune_model, require_torch_pruning,
    torch_pruning_available,
)
from ._channel_report import channels, layer_shapes, report_rows

#: Bisection steps of the ``mac_ratio`` search (the ratio is found to within 1/2**7 of the range).
SEARCH_STEPS = 7

Ratio = Annotated[float, Field(ge=0, lt=1)]


def _factor_kinds() -> tuple[type[nn.Module], ...]:
    try:
        from torchslim.lowrank import MODULE_KINDS
    except ImportError:  # pragma: no cover - lowrank is part of the core
        return ()
    return tuple(MODULE_KINDS)


class ChannelPruning:
    """Remove whole channels ranked by importance; coupled layers shrink with them (Torch-Pruning)."""

    default_types = DEFAULT_TYPES

    class Options(BaseModel):
        """Settings of the ``channel`` accelerate method."""

        model_config = ConfigDict(extra="forbid")

        ratio: float = Field(
            0.3, ge=0, lt=1, json_schema_extra={"strength": True},
            description="fraction of output channels removed: from every prunable group (scope 'uniform') "
                        "or from all groups ranked together (scope 'global'); MACs fall roughly as (1-ratio)^2")
        mac_ratio: float | None = Field(
            None, gt=0, le=1,
            description="instead of ratio: the fraction of the model's MACs to keep; the channel ratio that "
                        "reaches it is found by bisection (give ratio or mac_ratio, not both)")
        scope: Literal["uniform", "global"] = Field(
            "uniform", description="'uniform': the same ratio in every layer; 'global': rank all channels "
                                   "together, so layers lose different fractions")
        importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
            "l2", description="channel ranking: 'l1'/'l2' norm of the filter (summed over coupled layers), "
                              "'bn_scale' |gamma| of the following BatchNorm, 'taylor' |weight x gradient| "
                              "of the task loss on calibration_batches of train_data (needs targets)")
        overrides: dict[str, Ratio] = Field(
            default_factory=dict,
            description="per-layer ratios: {glob on layer names: ratio}, e.g. {'layer4.*': 0.6, "
                        "'layer1.*': 0.0}; a layer matching several globs takes the first")
        round_to: int | None = Field(
            None, ge=1, le=1024,
            description="keep channel counts multiples of this (8 or 16 keeps vectorised kernels fast); "
                        "a layer with fewer channels keeps them all")
        ignore: list[str] = Field(
            default_factory=list,
            description="globs of modules whose output channels are kept (a container keeps everything "
                        "inside it); besides these the layers producing the model output are always kept")
        protect_first: bool = Field(
            True, description="keep the output channels of the first layers (those reading the model "
                              "input, e.g. the stem conv), which are cheap and sensitive")
        max_layer_ratio: float = Field(
            0.9, gt=0, lt=1,
            description="at most this fraction of any one layer's channels is removed (guards 'global' "
                        "scope against emptying a layer)")
        iterative_steps: int = Field(
            1, ge=1, le=100,
            description="reach the ratio in this many equal steps, re-ranking (and, for taylor, "
                        "recomputing gradients) after each")
        finetune_between: dict[str, Any] | None = Field(
            None, description="a fine-tune step run between iterative steps, e.g. {method: sgd, epochs: 1}")
        calibration_batches: int = Field(
            4, ge=1, le=100_000, description="train_data batches whose loss gradients rank channels (taylor)")

        @model_validator(mode="after")
        def _consistent(self) -> "ChannelPruning.Options":
            if self.mac_ratio is not None and "ratio" in self.model_fields_set:
                raise ValueError(f"give ratio ({self.ratio}) or mac_ratio ({self.mac_ratio}), not both")
            if self.scope == "uniform" and self.ratio > self.max_layer_ratio:
                raise ValueError(
                    f"ratio={self.ratio} exceeds max_layer_ratio={self.max_layer_ratio}; raise max_layer_ratio")
            if self.finetune_between is not None and not isinstance(self.finetune_between.get("method"), str):
                raise ValueError("finetune_between must name a method, e.g. {method: sgd, epochs: 1}")
            if self.finetune_between is not None and self.iterative_steps < 2:
                raise ValueError("finetune_between needs iterative_steps >= 2 (it runs between steps)")
            if not torch_pruning_available():
                raise ValueError(f"method 'channel' needs Torch-Pruning, which is not installed: {INSTALL_HINT}")
            return self

    @torchslim.hookimpl
    def accelerate(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: ChannelPruning.Options = step.options
        where = f"accelerate/{step.method}"
        tp = require_torch_pruning()
        inputs = self._inputs(context, where)
        self._check_plain(model, where)
        with eval_mode(model), torch.no_grad():
            reference = call_model(model, inputs)
        before = layer_shapes(model, inputs)
        macs_before, params_before = count_macs(model, inputs), count_params(model)

        ratio = opts.ratio
        if opts.mac_ratio is not None:
            ratio = self._ratio_for_macs(model, inputs, opts, step, context, where, macs_before)
        pruned = copy.deepcopy(model)  # on failure the caller's model is left as it was
        outcome = self._prune(pruned, inputs, ratio, opts, step, context, where, finetune=True)

        out = run_pruned(pruned, inputs, where, lambda name: self._change(before, pruned, name))
        self._check_outputs(reference, out, where)
        after = layer_shapes(pruned, inputs)
        macs_after = count_macs(pruned, inputs)
        rows = report_rows(before, after, macs_after)
        changed = [r["layer"] for r in rows
                   if (r["channels_before"], r["in_channels_before"]) != (r["channels_after"], r["in_channels_after"])]
        for message in outcome.warnings:
            context.logger.warning("%s: Torch-Pruning: %s", where, message)
        info = {
            "ratio": round(ratio, 4), "scope": opts.scope, "importance": opts.importance,
            "macs_before": macs_before, "macs_after": macs_after,
            "mac_ratio": round(macs_after / macs_before, 4) if macs_before else 1.0,
            "params_before": params_before, "params_after": count_params(pruned),
            "layers_changed": len(changed), "groups_pruned": outcome.groups,
            "torch_pruning": getattr(tp, "__version__", "?"),
        }
        if outcome.warnings:
            info["torch_pruning_warnings"] = outcome.warnings
        return torchslim.StepResult(model=pruned, report=rows, skipped=outcome.skipped, info=info)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _inputs(context: Any, where: str) -> tuple:
        inputs = context.example_inputs
        if inputs is None or (isinstance(inputs, (tuple, list)) and len(inputs) == 0):
            raise DataError(
                f"{where}: channel pruning traces one forward pass and needs example inputs; pass "
                f"example_inputs=(x,) (or train_data/eval_data) to Engine.run")
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return to_device(inputs, context.device)

    @staticmethod
    def _check_plain(model: nn.Module, where: str) -> None:
        masked = [n for n, m in model.named_modules() if n and parametrize.is_parametrized(m)]
        if masked:
            raise ModelError(
                f"{where}: layers {', '.join(masked[:4])}{' ...' if len(masked) > 4 else ''} carry "
                f"parametrizations (pruning masks of an earlier compress step); channel pruning rewrites "
                f"weights and needs plain ones. Put the channel step before the compress step in the recipe.")

    @staticmethod
    def _prune(model: nn.Module, inputs: tuple, ratio: float, opts: Any, step: Any, context: Any,
               where: str, *, finetune: bool) -> Outcome:
        with eval_mode(model):
            return prune_model(model, inputs, ratio, opts, step.targets, context, where,
                               finetune_between=opts.finetune_between if finetune else None,
                               skip_inside=_factor_kinds())

    def _ratio_for_macs(self, model: nn.Module, inputs: tuple, opts: Any, step: Any, context: Any,
                        where: str, macs_before: int) -> float:
        """The smallest channel ratio whose pruned model keeps at most ``mac_ratio`` of the MACs."""
        budget = opts.mac_ratio * macs_before

        def macs_at(ratio: float) -> int:
            trial = copy.deepcopy(model)
            self._prune(trial, inputs, ratio, opts, step, context, where, finetune=False)
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

    @staticmethod
    def _change(before: dict, pruned: nn.Module, name: str) -> str:
        old = before.get(name)
        if old is None:
            return ""
        out, into = channels(pruned.get_submodule(name))
        return f"out channels {old.out_channels} -> {out}, in {old.in_channels} -> {into}"

    @staticmethod
    def _check_outputs(reference: Any, output: Any, where: str) -> None:
        old = [tuple(t.shape) for t in flat_tensors(reference)]
        new = [tuple(t.shape) for t in flat_tensors(output)]
        if old != new:
            raise ModelError(
                f"{where}: pruning changed the model's output shapes from {old} to {new}; the layer producing "
                f"the output was not recognised. Name it in 'ignore' (e.g. ignore: ['fc']).")
