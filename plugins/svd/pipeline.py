"""The ``svd`` pipeline: :func:`decompose` captures layer shapes, computes spectra, chooses ranks, swaps factors in."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import torch
from torch import nn

import torchslim
from torchslim.batches import call_model, has_inputs
from torchslim.calibration.random_tokens import random_token_batches
from torchslim.errors import ModelError
from torchslim.latency_table import LatencyTable
from torchslim.measure import count_macs, eval_mode
from torchslim.recipe import Targets
from torchslim.surgery import replace_submodule
from torchslim.targets import HFConv1D, select_modules

from .budget import budget_ranks, fixed_ranks
from .calibration import GramCollector
from .eligibility import applicable_forms, read_by_parent
from .layer import Layer, choose_forms, trial_key
from .macs import layer_macs
from .modules import MODULE_KINDS
from .options import SVDOptions
from .refit import refit
from .report import factorized_speed, row
from .sensitivity import sensitivities
from .spectra import compute_spectrum, factorize, weight_matrix
from .standins import attention_in_proj, linear_standins, restore_unfactorized, tied_reasons
from .timing import Activations, Trials

log = logging.getLogger("torchslim")

#: Layer types ``svd`` factorizes when the recipe names no types (HF ``Conv1D`` through a Linear stand-in).
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, HFConv1D)


def decompose(model: nn.Module, example_inputs: Any, options: "SVDOptions | dict | None" = None,
              *, targets: Targets | None = None, calibration: Iterable[Any] = (),
              where: str = "svd") -> torchslim.StepResult:
    """Factorize ``model``'s targeted layers in place and return the step result.

    ``example_inputs`` (a tuple of positional inputs, a tensor or a dict) give each layer's input
    shape for MACs, error and latency; ``calibration`` yields input batches for ``data_aware``.
    """
    opts = options if isinstance(options, SVDOptions) else SVDOptions.model_validate(options or {})
    start = time.perf_counter()
    if not has_inputs(example_inputs):
        raise ModelError(f"{where}: svd needs example inputs to size each layer; pass example_inputs=... "
                         f"(or train_data/eval_data) to Engine.run")
    selected = select_modules(model, targets, DEFAULT_TYPES, skip_inside=MODULE_KINDS)
    skipped: list[tuple[str, str]] = attention_in_proj(model, (targets or Targets()).include)
    tied = tied_reasons(model, selected)
    skipped += [(name, reason) for name, reason in tied.items()]
    selected = [(name, module) for name, module in selected if name not in tied]
    swapped = linear_standins(model, selected)  # HF Conv1D -> an equal nn.Linear for the step
    try:
        return _decompose(model, example_inputs, opts, selected, skipped, calibration, where, start)
    finally:
        restore_unfactorized(model, swapped)


def _decompose(model: nn.Module, example_inputs: Any, opts: SVDOptions, selected: list[tuple[str, nn.Module]],
               skipped: list[tuple[str, str]], calibration: Iterable[Any], where: str,
               start: float) -> torchslim.StepResult:
    layers, unfactorizable_macs, macs_before = capture(model, example_inputs, selected, opts, skipped)
    if opts.update or opts.random_tokens:
        calibration = list(calibration)
        calibration += random_token_batches(calibration, opts.random_tokens, model, where)
    grams = calibrate(model, layers, calibration, where) if opts.data_aware and layers else None
    spectrum_start = time.perf_counter()
    for layer in layers:
        for form in layer.forms:
            stats = grams.grams(layer.name, form) if grams is not None else {}
            layer.spectra[form] = compute_spectrum(weight_matrix(layer.module, form), form,
                                                   damping=opts.damping, **stats)
    spectrum_seconds = time.perf_counter() - spectrum_start

    table = LatencyTable() if opts.measure_latency and opts.latency_table else None
    trial = Trials(Activations(model, example_inputs), table=table, runtime=opts.runtime)
    info: dict[str, Any] = {}
    needed = 0.0
    if opts.rank_rule == "mac_ratio":
        targeted = sum(layer.macs for layer in layers) + unfactorizable_macs
        base = macs_before if opts.mac_scope == "model" else targeted
        needed = base * (1.0 - opts.mac_ratio)
        info["target_macs"] = int(base * opts.mac_ratio)
        weights = sensitivities(model, example_inputs, layers, needed) if opts.sensitivity else {}
        budget_ranks(layers, needed, opts, trial, skipped, weights)
    else:
        fixed_ranks(layers, opts, trial, skipped)

    if opts.rank_rule == "mac_ratio":  # before anything changes: a target that cannot be met fails the step
        _require_budget(layers, trial, needed, macs_before, opts, where)
    if opts.update:
        update_start = time.perf_counter()
        block_errors: list[tuple[float, float]] = []
        refitted = refit(model, [layer for layer in layers if layer.name not in trial.slow], calibration, opts.damping,
                         opts.update_damping, opts.match, opts.update_epochs, opts.update_lr, block_errors)
        if block_errors:  # per block: relative squared output error on the calibration batches
            info["block_error_before_fit"] = [round(before, 6) for before, _ in block_errors]
            info["block_error_after_fit"] = [round(after, 6) for _, after in block_errors]
        for layer in layers:
            if layer.name in refitted:
                trial.built[trial_key(layer)] = refitted[layer.name]
        info["layers_updated"] = len(refitted)
        info["update_seconds"] = time.perf_counter() - update_start
    report, saved = apply_factors(model, layers, trial, opts)
    macs_after = macs_before - saved
    info.update({
        "layers_decomposed": sum(1 for row in report if row["rank"] is not None),
        "layers_kept_slower": len(trial.slow), "layers_skipped": len(skipped),
        "macs_before": macs_before, "macs_after": macs_after,
        "mac_ratio": macs_after / macs_before if macs_before else 1.0,
        "data_aware": opts.data_aware, "spread_by": opts.spread_by, "seconds": time.perf_counter() - start,
        "spectrum_seconds": spectrum_seconds,
        "latency_table": None if table is None else {"path": str(table.path), "reused": table.hits,
                                                     "measured": table.measured},
        **factorized_speed(report),
    })
    return torchslim.StepResult(model=model, report=report, skipped=skipped, info=info)


def _require_budget(layers: list[Layer], trial: Trials, needed: float, macs_before: int, opts: SVDOptions,
                    where: str) -> None:
    """Raise a :class:`ModelError` saying what blocked it when the chosen ranks do not save ``needed`` MACs."""
    planned = sum(layer.macs - layer.factor_macs(layer.form, layer.rank) for layer in layers
                  if layer.rank is not None and layer.name not in trial.slow)
    if planned + 1e-9 >= needed:
        return
    after = macs_before - planned
    if trial.slow:
        why = (f"{len(trial.slow)} layer(s) were kept because their factors did not run faster on this machine "
               f"(the latency gate); lower min_speedup/min_realized, set measure_latency: false to cut by MACs "
               f"alone, or raise mac_ratio")
    elif opts.spread_by == "latency":
        why = ("spread_by: latency only uses ranks whose factors were timed faster than the original on this "
               "machine; use spread_by: macs, lower min_realized, or raise mac_ratio")
    else:
        why = ("the targeted layers cannot be cut further"
               + (f" with ranks in multiples of rank_multiple={opts.rank_multiple}" if opts.rank_multiple > 1 else "")
               + "; widen targets (targets.include/types), use mac_scope: targets, or raise mac_ratio")
    raise ModelError(f"{where}: mac_ratio={opts.mac_ratio} ({opts.mac_scope}) cannot be reached: the best cut keeps "
                     f"{after:,.0f} of {macs_before:,} MACs ({after / macs_before:.3f}); {why}")


def capture(model: nn.Module, example_inputs: Any, selected: list[tuple[str, nn.Module]],
             opts: "SVDOptions", skipped: list[tuple[str, str]]) -> tuple[list[Layer], int, int]:
    """Run the example inputs once, recording each targeted layer's input and output shape.

    Returns the factorizable layers, the MACs of the targeted layers that cannot be factorized
    (they still count toward a ``mac_scope: targets`` budget) and the whole model's MACs (counted
    in the same forward pass).
    """
    candidates: dict[str, tuple[nn.Module, list[str]]] = {}
    unfactorizable: dict[str, nn.Module] = {}
    for name, module in selected:
        forms, reason = applicable_forms(module)
        reason = read_by_parent(model, name) or reason
        if reason:
            skipped.append((name, reason))
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                unfactorizable[name] = module
            continue
        candidates[name] = (module, choose_forms(forms, opts.factorization))
    seen: dict[str, dict[str, Any]] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            entry = seen.setdefault(name, {"calls": 0})
            entry["calls"] += 1
            if "in_shape" not in entry:  # shapes only: activations are recomputed when needed
                entry["in_shape"] = tuple(args[0].shape)
                entry["out_shape"] = tuple(output.shape)
        return hook

    hooked = {**{name: module for name, (module, _) in candidates.items()}, **unfactorizable}
    handles = [module.register_forward_hook(hook_for(name)) for name, module in hooked.items()]
    try:
        model_macs = count_macs(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for name, (module, forms) in candidates.items():
        entry = seen.get(name)
        if entry is None:
            skipped.append((name, "did not run on the example inputs, so its MACs are unknown"))
            continue
        macs = layer_macs(module, entry["in_shape"], entry["out_shape"]) * entry["calls"]
        layers.append(Layer(name, module, forms, entry["in_shape"], entry["out_shape"], entry["calls"], macs))
    other = sum(layer_macs(module, seen[name]["in_shape"], seen[name]["out_shape"]) * seen[name]["calls"]
                for name, module in unfactorizable.items() if name in seen)
    return layers, other, model_macs


def calibrate(model: nn.Module, layers: list[Layer], calibration: Iterable[Any],
               where: str) -> GramCollector:
    """Sum the Gram matrices each layer's data-aware factors need over the calibration batches."""
    collector = GramCollector({layer.name: (layer.module, layer.forms) for layer in layers})
    batches = 0
    with collector, eval_mode(model), torch.no_grad():
        for inputs in calibration:
            call_model(model, inputs)
            batches += 1
    if batches == 0:
        raise ModelError(f"{where}: data_aware needs calibration batches but none came; pass train_data")
    return collector


def apply_factors(model: nn.Module, layers: list[Layer], trial: "Trials",
           opts: "SVDOptions") -> tuple[list[dict[str, Any]], int]:
    """Swap in the chosen factor modules; return the report rows and the MACs saved.

    Each layer's spectra are dropped once its factors are built (they are the step's largest
    holding after the weights), and the report's output errors come from one more forward pass.
    """
    chosen: dict[str, nn.Module] = {}
    for layer in layers:
        if layer.name not in trial.slow and layer.rank is not None:
            key = trial_key(layer)
            chosen[layer.name] = trial.built.pop(key, None) or factorize(layer.module, layer.spectra[layer.form],
                                                                         layer.rank)
        layer.spectra.clear()
    trial.built.clear()
    errors: dict[str, float] = {}

    def error(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> None:
        with eval_mode(chosen[layer.name]):
            errors[layer.name] = float((chosen[layer.name](x) - y).norm() / y.norm().clamp_min(1e-12))

    trial.activations.visit([layer for layer in layers if layer.name in chosen], error)
    report, saved = [], 0
    for layer in layers:
        key = trial_key(layer)
        if layer.name in trial.slow:
            report.append(row(layer, None, trial.timings.get(key), trial.slow[layer.name], 0.0))
            continue
        if layer.name not in chosen:
            continue
        timing = trial.timings.get(key)
        warning = ""
        if timing is not None and timing[1] > timing[0]:
            warning = (f"slower: {timing[0] / timing[1]:.2f}x the original's speed "
                       f"(kept as min_speedup={opts.min_speedup})")
        report.append(row(layer, chosen[layer.name], timing, warning, errors[layer.name]))
        saved += layer.macs - layer.factor_macs(layer.form, layer.rank)
    for name, module in chosen.items():
        replace_submodule(model, name, module)
    return report, saved

# ------------------------------------------------------------------ pieces
