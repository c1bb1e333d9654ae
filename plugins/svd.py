"""Built-in low-rank decomposition: method ``svd`` (stage ``accelerate``).

Replaces ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers by two smaller layers (the factor
modules of :mod:`torchslim.lowrank`) so fewer multiply-adds run, and checks that the cut turns into
wall-clock speed: with ``measure_latency`` every factorized layer is timed against the original on
its real input shape and the original is kept when the factors are not faster.

Recipe::

    steps:
      - accelerate: {method: svd, mac_ratio: 0.5, data_aware: true}
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

import torchslim
from torchslim.batches import call_model, float_tensors
from torchslim.decompose import (
    GramCollector, RankCurve, Spectrum, allocate_ranks, applicable_kinds, compute_spectrum, factor_macs,
    factorize, layer_macs, macs_per_rank, rank_for_energy, rank_for_ratio, read_by_parent, round_rank, weight_matrix,
)
from torchslim.errors import ModelError
from torchslim.lowrank import MODULE_KINDS
from torchslim.measure import _mha_fastpath_disabled as mha_fastpath_disabled
from torchslim.measure import count_macs, eval_mode
from torchslim.recipe import Targets
from torchslim.targets import select_modules

log = logging.getLogger("torchslim")

RANK_OPTIONS = ("rank", "rank_ratio", "energy", "mac_ratio")


@dataclass
class _Layer:
    """Everything the step learns about one targeted layer."""

    name: str
    module: nn.Module
    kinds: list[str]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    calls: int
    macs: int
    spectra: dict[str, Spectrum] = field(default_factory=dict)
    kind: str = ""
    rank: int | None = None

    def cost_per_rank(self, kind: str) -> int:
        return macs_per_rank(self.module, kind, self.in_shape, self.out_shape) * self.calls

    def factor_macs(self, kind: str, rank: int) -> int:
        return factor_macs(self.module, kind, rank, self.in_shape, self.out_shape) * self.calls


class _Activations:
    """Each targeted layer's real input and output, recomputed by a forward pass when needed.

    Keeping every layer's activations from the first pass would cost as much memory as the model's
    weights (a ResNet-50 on one 224x224 image: about 0.9x); instead :meth:`visit` runs the example
    inputs again and hands each wanted layer its activations during the pass, one layer at a time.
    """

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self.inputs = example_inputs if isinstance(example_inputs, (tuple, list, dict)) else (example_inputs,)

    def visit(self, layers: list["_Layer"], use: Callable[["_Layer", torch.Tensor, torch.Tensor], None]) -> None:
        """Call ``use(layer, x, y)`` with the input and output of each layer's first call, as captured.

        The pass runs in eval mode without gradients and with the fused attention kernels off, as the
        capturing pass did. A layer that does not run this time (data-dependent control flow) gets a
        random input of its recorded shape.
        """
        wanted = {id(layer.module): layer for layer in layers}
        done: set[str] = set()

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            layer = wanted.get(id(module))
            if layer is not None and layer.name not in done:
                done.add(layer.name)
                use(layer, args[0].detach(), output.detach())

        handles = [layer.module.register_forward_hook(hook) for layer in layers]
        try:
            with eval_mode(self.model), torch.no_grad(), mha_fastpath_disabled():
                call_model(self.model, self.inputs)
        finally:
            for handle in handles:
                handle.remove()
        for layer in layers:
            if layer.name not in done:
                weight = layer.module.weight
                x = torch.randn(layer.in_shape, dtype=weight.dtype, device=weight.device)
                with eval_mode(layer.module), torch.no_grad():
                    use(layer, x, layer.module(x))


@dataclass
class _Trials:
    """Factor modules built and timed so far, and the layers kept because their factors were slow."""

    activations: _Activations
    built: dict[tuple[str, str, int], nn.Module] = field(default_factory=dict)
    timings: dict[tuple[str, str, int], tuple[float, float]] = field(default_factory=dict)
    slow: dict[str, str] = field(default_factory=dict)
    floors: dict[tuple[str, str], int] = field(default_factory=dict)
    time_models: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)


def _key(layer: _Layer) -> tuple[str, str, int]:
    return (layer.name, layer.kind, layer.rank or 0)


class SVDDecomposition:
    """Factorize Linear/Conv layers by (data-aware) truncated SVD; keep only factors that run faster.

    Kinds: ``channel`` (a KxK conv with r filters, then 1x1), ``spatial`` (Kx1 then 1xK, Jaderberg et
    al. 2014) and ``linear`` (two Linears). Ranks come from one of ``rank``, ``rank_ratio``,
    ``energy`` or ``mac_ratio``; the last spreads a MAC budget over the layers, cutting first where
    the least (normalized) output energy is lost per MAC saved. ``data_aware`` chooses the factors
    that minimise each layer's output error on calibration activations (SVD-LLM whitening) rather
    than the weight error. Grouped convs are factorized per group; depthwise convs and layers whose
    factors would not save MACs are left alone and listed in ``skipped``.
    """

    default_types = (nn.Conv1d, nn.Conv2d, nn.Linear)

    class Options(BaseModel):
        """Settings of the ``svd`` decomposition method."""

        model_config = ConfigDict(extra="forbid")

        kind: Literal["auto", "channel", "spatial"] = Field(
            "channel",
            description="conv factorization: 'channel' (KxK with r filters then 1x1), 'spatial' (Kx1 then "
                        "1xK; convs with a 1-wide kernel and Conv1d use channel) or 'auto' (per layer, "
                        "fewer MACs at the rank, or less error at the MAC budget with mac_ratio); "
                        "Linear layers always become two Linears")
        rank: int | None = Field(None, ge=1, description="fixed rank (per group) for every layer, capped at full rank")
        rank_ratio: float = Field(
            0.5, gt=0, le=1, json_schema_extra={"strength": "lower"},
            description="kept fraction of each layer's full rank; used when rank, energy and mac_ratio are "
                        "not given (lower is stronger)")
        energy: float | None = Field(
            None, gt=0, le=1,
            description="per layer, the smallest rank whose singular values hold this fraction of the "
                        "squared spectrum (of the output, with data_aware)")
        mac_ratio: float | None = Field(
            None, gt=0, le=1,
            description="MACs after / before to reach; ranks are spread over the layers where the least "
                        "normalized energy is lost per MAC saved")
        sensitivity: bool = Field(
            False,
            description="with mac_ratio: weigh each layer's spectrum by its measured effect on the model's output "
                        "(one extra forward pass per layer on the example inputs), so the budget goes where the "
                        "output changes least")
        mac_scope: Literal["model", "targets"] = Field(
            "model", description="what mac_ratio is a fraction of: the whole model's MACs or the targeted layers'")
        rank_multiple: int = Field(
            1, ge=1, le=256, description="round ranks to multiples of this (8 suits SIMD kernels); full rank stays")
        data_aware: bool = Field(
            False, description="minimise each layer's output error on calibration activations (whitening as "
                               "in SVD-LLM) instead of the weight error")
        calibration_batches: int = Field(
            8, ge=1, le=10_000, description="batches of train data used to gather activations when data_aware")
        damping: float = Field(
            0.01, gt=0, le=10,
            description="data_aware ridge, relative to the mean activation energy; larger blends toward plain SVD")
        measure_latency: bool = Field(
            True, description="time every factorized layer against the original on its real input shape and "
                              "keep the original when the factors are not min_speedup times faster")
        min_speedup: float = Field(
            1.0, ge=0, le=100,
            description="with measure_latency, keep factors only at this layer speedup or more (0 keeps all)")
        min_realized: float = Field(
            0.0, ge=0, le=1,
            description="with measure_latency, keep factors only when the layer's measured speedup is at least "
                        "this fraction of its MAC cut (0: only min_speedup applies); with mac_ratio such a layer "
                        "is cut less and the budget moves to layers where fewer MACs really mean less time")
        latency_runs: int = Field(
            10, ge=1, le=1000,
            description="timed runs per layer and version, interleaved; the best run counts (least disturbed)")
        spread_by: Literal["macs", "latency"] = Field(
            "macs",
            description="with mac_ratio, what a cut is weighed against: normalized energy lost per MAC saved "
                        "('macs', the same ranks on every machine) or per millisecond saved, from each layer's "
                        "factors timed at two ranks on its real input ('latency', needs measure_latency): the "
                        "budget then goes to layers where fewer MACs really run faster")

        @model_validator(mode="after")
        def _one_rank_rule(self) -> "SVDDecomposition.Options":
            given = [name for name in RANK_OPTIONS if name in self.model_fields_set and getattr(self, name) is not None]
            if len(given) > 1:
                raise ValueError(f"give one of rank, rank_ratio, energy or mac_ratio, not {' and '.join(given)}")
            if self.spread_by == "latency" and (self.mac_ratio is None or not self.measure_latency):
                raise ValueError("spread_by='latency' spreads a mac_ratio budget by measured layer times: give "
                                 "mac_ratio and keep measure_latency true, or use spread_by='macs'")
            return self

        @property
        def rank_rule(self) -> str:
            """Which rank option decides: the one given, else ``rank_ratio``."""
            for name in ("rank", "energy", "mac_ratio"):
                if getattr(self, name) is not None:
                    return name
            return "rank_ratio"

    @torchslim.hookimpl
    def accelerate(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: SVDDecomposition.Options = step.options
        calibration: Iterable[Any] = ()
        if opts.data_aware:
            calibration = context.calibration_batches(opts.calibration_batches)
        return self.decompose(model, context.example_inputs, opts, targets=step.targets,
                              calibration=calibration, where=f"step {context.step_index} ({step.label})")

    # ------------------------------------------------------------------ the work
    def decompose(self, model: nn.Module, example_inputs: Any, options: "SVDDecomposition.Options | dict | None" = None,
                  *, targets: Targets | None = None, calibration: Iterable[Any] = (),
                  where: str = "svd") -> torchslim.StepResult:
        """Factorize ``model``'s targeted layers in place and return the step result.

        ``example_inputs`` (a tuple of positional inputs, a tensor or a dict) give each layer's input
        shape for MACs, error and latency; ``calibration`` yields input batches for ``data_aware``.
        """
        opts = options if isinstance(options, self.Options) else self.Options.model_validate(options or {})
        start = time.perf_counter()
        if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 0):
            raise ModelError(f"{where}: svd needs example inputs to size each layer; pass example_inputs=... "
                             f"(or train_data/eval_data) to Engine.run")
        selected = select_modules(model, targets, self.default_types, skip_inside=MODULE_KINDS)
        skipped: list[tuple[str, str]] = []
        layers, unfactorizable_macs, macs_before = self._capture(model, example_inputs, selected, opts, skipped)
        grams = self._calibrate(model, layers, calibration, where) if opts.data_aware and layers else None
        spectrum_start = time.perf_counter()
        for layer in layers:
            for kind in layer.kinds:
                stats = grams.grams(layer.name, kind) if grams is not None else {}
                layer.spectra[kind] = compute_spectrum(weight_matrix(layer.module, kind), kind,
                                                       damping=opts.damping, **stats)
        spectrum_seconds = time.perf_counter() - spectrum_start

        trial = _Trials(_Activations(model, example_inputs))
        info: dict[str, Any] = {}
        needed = 0.0
        if opts.rank_rule == "mac_ratio":
            targeted = sum(layer.macs for layer in layers) + unfactorizable_macs
            base = macs_before if opts.mac_scope == "model" else targeted
            needed = base * (1.0 - opts.mac_ratio)
            info["target_macs"] = int(base * opts.mac_ratio)
            weights = self._sensitivities(model, example_inputs, layers, needed) if opts.sensitivity else {}
            self._budget_ranks(layers, needed, opts, trial, skipped, weights)
        else:
            self._fixed_ranks(layers, opts, trial, skipped)

        report, saved = self._apply(model, layers, trial, opts)
        macs_after = macs_before - saved
        info.update({
            "layers_decomposed": sum(1 for row in report if row["rank"] is not None),
            "layers_kept_slower": len(trial.slow), "layers_skipped": len(skipped),
            "macs_before": macs_before, "macs_after": macs_after,
            "mac_ratio": macs_after / macs_before if macs_before else 1.0,
            "data_aware": opts.data_aware, "spread_by": opts.spread_by, "seconds": time.perf_counter() - start,
            "spectrum_seconds": spectrum_seconds,
            **_factorized_speed(report),
        })
        if opts.rank_rule == "mac_ratio" and saved + 1e-9 < needed:
            why = (f"{len(trial.slow)} layer(s) kept because their factors were not faster (lower min_speedup)"
                   if trial.slow else "the targeted layers cannot be cut further"
                   + (f" with ranks in multiples of rank_multiple={opts.rank_multiple}" if opts.rank_multiple > 1 else ""))
            message = (f"{where}: mac_ratio={opts.mac_ratio} ({opts.mac_scope}) not reached: {macs_after:,} MACs "
                       f"of {macs_before:,} ({macs_after / macs_before:.3f}); {why}. Widen targets or raise mac_ratio.")
            info["warning"] = message
            log.warning(message)
        return torchslim.StepResult(model=model, report=report, skipped=skipped, info=info)

    def _budget_ranks(self, layers: list[_Layer], needed: float, opts: "SVDDecomposition.Options",
                      trial: "_Trials", skipped: list[tuple[str, str]], weights: dict[str, float]) -> None:
        """Spread ``needed`` MAC savings; where factors were not fast enough, cut that layer less and re-spread.

        A layer whose factors miss ``min_speedup``/``min_realized`` at rank ``r`` gets a rank floor halfway
        from ``r`` to its break-even rank, so the next allocation cuts it more gently and moves the rest of
        the budget elsewhere; a layer with no useful rank left keeps its original.
        """
        for attempt in range(_LATENCY_ROUNDS):
            active = [layer for layer in layers if layer.name not in trial.slow]
            self._allocate(active, needed, opts, weights, trial)
            failed = self._check_latency(active, opts, trial)
            if not failed:
                break
            for layer in active:
                if layer.name not in failed:
                    continue
                floor = _raised_floor(layer, opts.rank_multiple)
                if floor is None or attempt == _LATENCY_ROUNDS - 1:
                    trial.slow[layer.name] = failed[layer.name]
                else:
                    trial.floors[(layer.name, layer.kind)] = floor
        for layer in layers:
            if layer.name not in trial.slow and layer.rank is None:
                skipped.append((layer.name, "mac_ratio: the budget was met by cheaper cuts elsewhere"))

    def _fixed_ranks(self, layers: list[_Layer], opts: "SVDDecomposition.Options", trial: "_Trials",
                     skipped: list[tuple[str, str]]) -> None:
        """Ranks by ``rank``/``rank_ratio``/``energy``; layers whose factors save no MACs are skipped."""
        for layer in layers:
            self._fixed_rank(layer, opts)
            factor = layer.factor_macs(layer.kind, layer.rank)
            if factor >= layer.macs:
                skipped.append((layer.name, f"rank {layer.rank} ({layer.kind}) needs {factor:,} MACs >= the "
                                            f"original {layer.macs:,}: no reduction"))
                layer.rank = None
        trial.slow.update(self._check_latency(layers, opts, trial))

    def _apply(self, model: nn.Module, layers: list[_Layer], trial: "_Trials",
               opts: "SVDDecomposition.Options") -> tuple[list[dict[str, Any]], int]:
        """Swap in the chosen factor modules; return the report rows and the MACs saved.

        Each layer's spectra are dropped once its factors are built (they are the step's largest
        holding after the weights), and the report's output errors come from one more forward pass.
        """
        chosen: dict[str, nn.Module] = {}
        for layer in layers:
            if layer.name not in trial.slow and layer.rank is not None:
                key = _key(layer)
                chosen[layer.name] = trial.built.pop(key, None) or factorize(layer.module, layer.spectra[layer.kind],
                                                                             layer.rank)
            layer.spectra.clear()
        trial.built.clear()
        errors: dict[str, float] = {}

        def error(layer: _Layer, x: torch.Tensor, y: torch.Tensor) -> None:
            with eval_mode(chosen[layer.name]):
                errors[layer.name] = float((chosen[layer.name](x) - y).norm() / y.norm().clamp_min(1e-12))

        trial.activations.visit([layer for layer in layers if layer.name in chosen], error)
        report, saved = [], 0
        for layer in layers:
            key = _key(layer)
            if layer.name in trial.slow:
                report.append(self._row(layer, None, trial.timings.get(key), trial.slow[layer.name], 0.0))
                continue
            if layer.name not in chosen:
                continue
            timing = trial.timings.get(key)
            warning = ""
            if timing is not None and timing[1] > timing[0]:
                warning = (f"slower: {timing[0] / timing[1]:.2f}x the original's speed "
                           f"(kept as min_speedup={opts.min_speedup})")
            report.append(self._row(layer, chosen[layer.name], timing, warning, errors[layer.name]))
            saved += layer.macs - layer.factor_macs(layer.kind, layer.rank)
        for name, module in chosen.items():
            _replace(model, name, module)
        return report, saved

    # ------------------------------------------------------------------ pieces
    def _capture(self, model: nn.Module, example_inputs: Any, selected: list[tuple[str, nn.Module]],
                 opts: "SVDDecomposition.Options", skipped: list[tuple[str, str]]) -> tuple[list[_Layer], int, int]:
        """Run the example inputs once, recording each targeted layer's input and output shape.

        Returns the factorizable layers, the MACs of the targeted layers that cannot be factorized
        (they still count toward a ``mac_scope: targets`` budget) and the whole model's MACs (counted
        in the same forward pass).
        """
        candidates: dict[str, tuple[nn.Module, list[str]]] = {}
        unfactorizable: dict[str, nn.Module] = {}
        for name, module in selected:
            kinds, reason = applicable_kinds(module)
            reason = read_by_parent(model, name) or reason
            if reason:
                skipped.append((name, reason))
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                    unfactorizable[name] = module
                continue
            candidates[name] = (module, _choose_kinds(kinds, opts.kind))
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
        for name, (module, kinds) in candidates.items():
            entry = seen.get(name)
            if entry is None:
                skipped.append((name, "did not run on the example inputs, so its MACs are unknown"))
                continue
            macs = layer_macs(module, entry["in_shape"], entry["out_shape"]) * entry["calls"]
            layers.append(_Layer(name, module, kinds, entry["in_shape"], entry["out_shape"], entry["calls"], macs))
        other = sum(layer_macs(module, seen[name]["in_shape"], seen[name]["out_shape"]) * seen[name]["calls"]
                    for name, module in unfactorizable.items() if name in seen)
        return layers, other, model_macs

    def _calibrate(self, model: nn.Module, layers: list[_Layer], calibration: Iterable[Any],
                   where: str) -> GramCollector:
        """Sum the Gram matrices each layer's data-aware factors need over the calibration batches."""
        collector = GramCollector({layer.name: (layer.module, layer.kinds) for layer in layers})
        batches = 0
        with collector, eval_mode(model), torch.no_grad():
            for inputs in calibration:
                call_model(model, inputs)
                batches += 1
        if batches == 0:
            raise ModelError(f"{where}: data_aware needs calibration batches but none came; pass train_data")
        return collector

    def _fixed_rank(self, layer: _Layer, opts: "SVDDecomposition.Options") -> None:
        """Rank by ``rank``/``rank_ratio``/``energy``; with several kinds the one with fewer MACs."""
        best = None
        for kind in layer.kinds:
            spectrum = layer.spectra[kind]
            full = spectrum.full_rank
            if opts.rank_rule == "rank":
                rank = round_rank(opts.rank, opts.rank_multiple, full)
            elif opts.rank_rule == "energy":
                rank = rank_for_energy(spectrum, opts.energy, opts.rank_multiple)
            else:
                rank = rank_for_ratio(full, opts.rank_ratio, opts.rank_multiple)
            macs = layer.factor_macs(kind, rank)
            if best is None or macs < best[0]:
                best = (macs, kind, rank)
        _, layer.kind, layer.rank = best

    def _allocate(self, layers: list[_Layer], needed: float, opts: "SVDDecomposition.Options",
                  weights: dict[str, float], trial: "_Trials") -> None:
        """Spread ``needed`` MAC savings over ``layers`` (choosing each layer's kind first when auto)."""
        share = _share(layers, needed)
        for layer in layers:
            layer.kind = min(layer.kinds, key=lambda kind: self._error_at_share(layer, kind, share))
        if opts.spread_by == "latency":
            self._time_models(layers, opts, trial)
        curves = []
        for layer in layers:
            energies = layer.spectra[layer.kind].energies.sum(0)
            curves.append(RankCurve(layer.macs, layer.cost_per_rank(layer.kind), energies,
                                    weights.get(layer.name, 1.0), trial.floors.get((layer.name, layer.kind), 1),
                                    trial.time_models.get((layer.name, layer.kind))))
        for layer, rank in zip(layers, allocate_ranks(curves, needed, opts.rank_multiple)):
            layer.rank = rank

    def _time_models(self, layers: list[_Layer], opts: "SVDDecomposition.Options", trial: "_Trials") -> None:
        """Time each layer's factors at two ranks on its real input: ``(original, fixed, per rank)`` in ms.

        The probes sit at a quarter and three fifths of the largest rank that still saves MACs, around
        where a 2x budget lands; between and beyond them the time is taken as linear in the rank (the
        factor convs' MACs are). A layer with no rank below break-even gets no model (it has no cut).
        """
        step = max(1, opts.rank_multiple)

        def probe(layer: _Layer, x: torch.Tensor, y: torch.Tensor) -> None:
            top = min(layer.spectra[layer.kind].full_rank - 1, _break_even(layer))
            ranks = sorted({max(step, top // 4 // step * step), max(step, top * 3 // 5 // step * step)})
            ranks = [rank for rank in ranks if rank <= top] or [max(1, top)]
            measured = []
            for rank in ranks:
                before, after = _time_pair(layer.module, factorize(layer.module, layer.spectra[layer.kind], rank),
                                           x, opts.latency_runs)
                trial.timings[(layer.name, layer.kind, rank)] = (before, after)
                measured.append((rank, before, after))
            original = min(before for _, before, _ in measured)
            if len(measured) == 1:
                (rank, _, after), = measured
                trial.time_models[(layer.name, layer.kind)] = (original, 0.0, after / rank)
                return
            (r1, _, t1), (r2, _, t2) = measured
            per_rank = (t2 - t1) / (r2 - r1)
            trial.time_models[(layer.name, layer.kind)] = (original, t1 - per_rank * r1, per_rank)

        missing = [layer for layer in layers if (layer.name, layer.kind) not in trial.time_models
                   and _break_even(layer) >= 1]
        if missing:
            trial.activations.visit(missing, probe)

    @staticmethod
    def _error_at_share(layer: _Layer, kind: str, share: float) -> float:
        return layer.spectra[kind].error_at(_rank_at_share(layer, kind, share))

    def _sensitivities(self, model: nn.Module, example_inputs: Any, layers: list[_Layer],
                       needed: float) -> dict[str, float]:
        """Per layer: the model's relative output error with only that layer cut, per unit of predicted error.

        Each layer is probed at the rank one MAC ratio everywhere would give it; the ratio of the
        measured (squared, relative) change of the model's floating-point outputs to the layer's own
        normalized energy lost turns the layer's spectrum into a model-level error estimate.
        """
        inputs = example_inputs if isinstance(example_inputs, (tuple, list, dict)) else (example_inputs,)
        share = _share(layers, needed)
        with eval_mode(model), torch.no_grad():
            reference = float_tensors(call_model(model, inputs))
            scale = sum(float(t.pow(2).sum()) for t in reference) or 1.0
            weights = {}
            for layer in layers:
                kind = layer.kinds[0]
                spectrum = layer.spectra[kind]
                rank = _rank_at_share(layer, kind, share)
                predicted = spectrum.error_at(rank) ** 2
                if predicted <= 0.0:
                    continue
                probe = factorize(layer.module, spectrum, rank)
                handle = layer.module.register_forward_hook(lambda module, args, output: probe(args[0]))
                try:
                    changed = float_tensors(call_model(model, inputs))
                finally:
                    handle.remove()
                error = sum(float((a - b).pow(2).sum()) for a, b in zip(changed, reference)) / scale
                weights[layer.name] = error / predicted
        return weights

    def _check_latency(self, layers: list[_Layer], opts: "SVDDecomposition.Options",
                       trial: "_Trials") -> dict[str, str]:
        """Time each layer's candidate factors; return the layers not fast enough, with the reason."""
        if not opts.measure_latency:
            return {}
        failed = {}
        timed = [layer for layer in layers if layer.rank is not None and layer.name not in trial.slow]
        for layer in timed:
            key = _key(layer)
            if key not in trial.built:
                trial.built[key] = factorize(layer.module, layer.spectra[layer.kind], layer.rank)

        def time_layer(layer: _Layer, x: torch.Tensor, y: torch.Tensor) -> None:
            key = _key(layer)
            trial.timings[key] = _time_pair(layer.module, trial.built[key], x, opts.latency_runs)

        trial.activations.visit([layer for layer in timed if _key(layer) not in trial.timings], time_layer)
        for layer in timed:
            key = _key(layer)
            before, after = trial.timings[key]
            cut = layer.macs / max(1, layer.factor_macs(layer.kind, layer.rank))
            if before < opts.min_speedup * after or before < opts.min_realized * cut * after:
                failed[layer.name] = (
                    f"kept original: rank-{layer.rank} {layer.kind} factors cut MACs {cut:.2f}x but ran "
                    f"{before / after:.2f}x as fast (min_speedup={opts.min_speedup}, "
                    f"min_realized={opts.min_realized})")
        return failed

    @staticmethod
    def _row(layer: _Layer, module: nn.Module | None, timing: tuple[float, float] | None, warning: str,
             error: float) -> dict:
        before = _shape(layer.module.weight)
        return {
            "layer": layer.name,
            "kind": layer.kind,
            "shape_before": before,
            "shape_after": before if module is None else f"{_shape(module.first.weight)} + {_shape(module.second.weight)}",
            "rank": None if module is None else layer.rank,
            "macs_before": layer.macs,
            "macs_after": layer.macs if module is None else layer.factor_macs(layer.kind, layer.rank),
            "rel_output_error": error,
            "latency_before_ms": None if timing is None else timing[0],
            "latency_after_ms": None if timing is None else (timing[0] if module is None else timing[1]),
            "warning": warning,
        }


_LATENCY_ROUNDS = 8


def _factorized_speed(report: list[dict]) -> dict[str, float]:
    """Summed timings of the factorized, timed layers: their speedup and its share of their MAC cut.

    A whole-model speedup falls short of the MAC cut by the untouched work (batch norms, activations,
    pooling, kept layers); this says how much of the cut the factorized layers themselves realized.
    """
    timed = [row for row in report if row["rank"] is not None and row["latency_before_ms"] is not None]
    if not timed:
        return {}
    before = sum(row["latency_before_ms"] for row in timed)
    after = sum(row["latency_after_ms"] for row in timed)
    cut = sum(row["macs_before"] for row in timed) / max(1, sum(row["macs_after"] for row in timed))
    return {"factorized_ms_before": before, "factorized_ms_after": after,
            "factorized_speedup": before / after, "factorized_realized": before / after / cut}


def _break_even(layer: _Layer) -> int:
    """The largest rank of ``layer.kind`` whose factors still save MACs."""
    return -(-layer.macs // layer.cost_per_rank(layer.kind)) - 1


def _raised_floor(layer: _Layer, multiple: int) -> int | None:
    """The rank floor after ``layer`` was too slow at ``layer.rank``: halfway to break-even, or None."""
    break_even = _break_even(layer)
    step = max(1, multiple)
    floor = layer.rank + max(step, (break_even - layer.rank) // 2)
    floor = -(-floor // step) * step
    return floor if floor <= break_even else None


def _share(layers: list[_Layer], needed: float) -> float:
    """The fraction of their MACs ``layers`` would keep if every one gave up the same share."""
    return min(1.0, max(0.0, 1.0 - needed / max(1, sum(layer.macs for layer in layers))))


def _rank_at_share(layer: _Layer, kind: str, share: float) -> int:
    full = layer.spectra[kind].full_rank
    return min(full, max(1, int(share * layer.macs / layer.cost_per_rank(kind))))


def _choose_kinds(kinds: list[str], wanted: str) -> list[str]:
    if wanted == "auto":
        return kinds
    if wanted == "spatial" and "spatial" in kinds:
        return ["spatial"]
    return kinds[:1]


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape)


def _time_pair(before: nn.Module, after: nn.Module, x: torch.Tensor, runs: int) -> tuple[float, float]:
    """Best-of-``runs`` ms of ``before`` and ``after`` on ``x``, one run of each in turn.

    Interleaving exposes both to the same machine load; the minimum is the estimate least disturbed
    by other processes (the layer's own cost), which is what the keep-or-revert decision needs.
    measure_latency's median of back-to-back runs cannot interleave, hence this small loop.
    """
    times: tuple[list[float], list[float]] = ([], [])
    with eval_mode(before), eval_mode(after), torch.inference_mode():
        for module in (before, after):
            module(x)
            module(x)
        for _ in range(runs):
            for module, bucket in ((before, times[0]), (after, times[1])):
                start = time.perf_counter()
                module(x)
                bucket.append(time.perf_counter() - start)
    return min(times[0]) * 1000.0, min(times[1]) * 1000.0


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
