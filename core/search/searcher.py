"""Automatic strategy search: per-layer sensitivity, greedy allocation to a target, fine-tune, back off.

The search drives any method whose ``Options`` model marks one field as its strength knob
(``json_schema_extra={"strength": True}``): larger means more compression. For every targeted layer
and every strength of a grid it applies the method to that layer alone, scores the model on a
calibration subset of the eval data, and measures the cost with the target metric itself (MACs,
parameters, saved bytes, or measured layer latency). It then picks per-layer strengths that reach
the target at the least predicted loss (greedy on marginal loss per unit of cost saved), applies
them, fine-tunes, evaluates, and when a constraint fails weakens the target or fine-tunes longer,
a bounded number of times. Sensitivities are cached on disk, keyed by model and data fingerprints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn
from tqdm.auto import tqdm

from ..batches import float_tensors, split_batch
from ..cache_dir import default_cache_dir
from ..constraints import check_constraints
from ..errors import RecipeError
from ..recipe import Search, Step, Targets
from ..results import StepRecord, StepResult
from ..runtime import deploy
from ..surgery import fingerprint, private_copy
from ..targets import WEIGHT_LAYERS, select_modules
from .allocation import allocate
from .cache import CACHE_VERSION, SensitivityCache
from .knobs import Knob, default_grid, exact_glob, strength_knob
from .plots import write_plots

if TYPE_CHECKING:  # pragma: no cover
    from ..context import RunContext
    from ..registry import PluginRegistry

log = logging.getLogger("torchslim")


class Searcher:
    """Runs the search block of a recipe; used by :meth:`Engine.run` when ``recipe.search`` is set."""

    def __init__(self, registry: "PluginRegistry", search: Search, context: "RunContext",
                 evaluators: list[str], out_dir: Path | None) -> None:
        self.registry = registry
        self.search = search
        self.context = context
        self.evaluators = evaluators
        self.out_dir = out_dir
        (self.target_metric, self.target_ratio), = search.target.items()
        self.directions = registry.directions()
        self.score_metric = search.metric or next(iter(context.recipe.constraints.max_drop), "accuracy")
        if self.score_metric not in self.directions:
            raise RecipeError(f"search.metric={self.score_metric!r} is produced by no installed evaluator")

    # ------------------------------------------------------------------ measuring
    def _calibration_context(self) -> "RunContext":
        ctx = copy.copy(self.context)
        ctx.evaluation = self.context.evaluation.model_copy(update={
            "max_eval_batches": self.search.calibration_batches, "latency_runs": 5, "latency_warmup": 1})
        return ctx

    def score(self, model: nn.Module) -> float:
        """The sensitivity metric on the calibration subset."""
        names = [n for n in self.evaluators if self.score_metric in getattr(
            self.registry.infos[n].obj, "metrics", {})]
        model.eval()
        with torch.no_grad():
            metrics = self.registry.evaluate(names, model, self._calibration_context())
        return float(metrics[self.score_metric])

    def loss(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (never below zero)."""
        worse = baseline - value if self.directions.get(self.score_metric, "higher") == "higher" else value - baseline
        return max(0.0, worse)

    def cost(self, model: nn.Module) -> float:
        """The target metric of ``model``, from the evaluator that returns it (any lower-is-better metric).

        With ``search.runtime`` the metric is measured on ``model`` deployed in that runtime.
        """
        producer = self.registry.producer(self.target_metric)
        if self.search.runtime is not None:  # the cost where the model will run, not in eager PyTorch
            model = deploy(model, self.context.example_inputs, self.search.runtime, registry=self.registry,
                           train_data=self.context.train_data, seed=self.context.seed, **self.search.runtime_options)
        model.eval()
        with torch.no_grad():
            metrics = self.registry.evaluate([producer], model, self.context)
        if self.target_metric not in metrics:
            raise RecipeError(f"search.target: evaluator {producer!r} returned no {self.target_metric!r} for this "
                              f"model and data (it returns {sorted(metrics) or 'nothing'})")
        return float(metrics[self.target_metric])

    # ------------------------------------------------------------------ applying
    def apply(self, model: nn.Module, knob: Knob, strength: float) -> tuple[nn.Module, StepResult]:
        """Apply ``knob``'s method to its layer alone at ``strength``."""
        template = knob.template
        options = (template.options.model_dump(exclude_unset=True) if isinstance(template.options, BaseModel)
                   else dict(template.options))
        options[knob.knob] = strength
        step = Step(stage=template.stage, method=template.method, options=options,
                    targets=Targets(include=[exact_glob(knob.layer)], types=template.targets.types))
        result = self.context.run_step(model, step)
        return result.model, result

    # ------------------------------------------------------------------ sensitivity
    def knobs(self, model: nn.Module) -> list[Knob]:
        """Every (method, layer) pair the search may set, with its strength grid."""
        out: list[Knob] = []
        for index, template in enumerate(self.search.methods):
            plugin = self.registry.get(template.stage, template.method)
            options_model = getattr(plugin, "Options", None)
            found = strength_knob(options_model, plugin)
            if found is None:
                continue
            knob, direction = found
            grid = sorted(self.search.grid or default_grid(options_model, knob), reverse=direction == "lower")
            layers = select_modules(model, template.targets, getattr(plugin, "default_types", WEIGHT_LAYERS))
            out += [Knob(index, template, knob, name, grid) for name, _ in layers]
        return out

    def sensitivity(self, model: nn.Module, knobs: list[Knob], baseline_score: float, baseline_cost: float) -> int:
        """Fill ``knob.points`` for every knob and grid strength, from the cache where possible.

        Returns how many trials had to be run (0 when the cache held them all).
        """
        cache = SensitivityCache(self.cache_path(model))
        todo = [(k, s) for k in knobs for s in k.grid if cache.get(k.key, s) is None]
        bar = tqdm(total=len(todo), desc="sensitivity", unit="trial", disable=not sys.stderr.isatty(), leave=False)
        reference = self.outputs(model) if todo else []
        for knob, strength in todo:
            trial, _ = self.apply(private_copy(model), knob, strength)
            loss = self.loss(baseline_score, self.score(trial))
            distortion = _relative_change(self.outputs(trial), reference)
            saving = baseline_cost - self.cost(trial)
            cache.put(knob.key, strength, {"loss": loss, "saving": saving, "distortion": distortion})
            bar.update(1)
        bar.close()
        for knob in knobs:
            knob.points = {s: cache.get(knob.key, s) for s in knob.grid}
        return len(todo)

    def cache_path(self, model: nn.Module) -> Path:
        """Cache file keyed by the model, the calibration data, the methods and the target metric."""
        digest = hashlib.sha256()
        digest.update(fingerprint(model).encode())
        for batch in self._calibration_batches():
            for tensor in batch:
                if isinstance(tensor, torch.Tensor):
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        setup = {"version": CACHE_VERSION,
                 "methods": [m.model_dump(mode="json") for m in self.search.methods], "grid": self.search.grid,
                 "target": self.target_metric, "metric": self.score_metric,
                 "batches": self.search.calibration_batches, "evaluators": self.evaluators}
        digest.update(json.dumps(setup, sort_keys=True, default=str).encode())
        root = Path(self.search.cache_dir) if self.search.cache_dir else default_cache_dir()
        return root / f"sensitivity-{digest.hexdigest()[:24]}.json"

    def outputs(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's floating-point outputs on the calibration batches (for output distortion)."""
        found: list[torch.Tensor] = []
        model.eval()
        with torch.no_grad():
            for index, batch in enumerate(self.context.eval_data or ()):
                if index >= self.search.calibration_batches:
                    break
                inputs, _ = split_batch(batch)
                found += float_tensors(self.context.forward(model, inputs, where="a calibration batch"))
        return found

    def _calibration_batches(self) -> list[tuple]:
        out = []
        if self.context.eval_data is None:
            return out
        for i, batch in enumerate(self.context.eval_data):
            if i >= self.search.calibration_batches:
                break
            inputs, target = split_batch(batch)
            out.append((inputs, target) if not isinstance(inputs, dict) else (*inputs.values(), target))
        return out

    def build(self, model: nn.Module, knobs: list[Knob], chosen: dict[str, float]) -> tuple[nn.Module, list[StepRecord]]:
        """Apply an allocation to a copy of ``model``: one record per method template."""
        working = private_copy(model)
        records = []
        for index, template in enumerate(self.search.methods):
            start = time.perf_counter()
            report: list[dict[str, Any]] = []
            skipped: list[tuple[str, str]] = []
            used = [k for k in knobs if k.template_index == index and k.key in chosen]
            if self.registry.strength(template.stage, template.method) is None:
                result = self.context.run_step(working, template)  # no knob: applied as configured
                working, report, skipped = result.model, list(result.report), list(result.skipped)
            for knob in used:
                working, result = self.apply(working, knob, chosen[knob.key])
                report += [{"strength": chosen[knob.key], **row} for row in result.report]
                skipped += list(result.skipped)
            options = {k.layer: chosen[k.key] for k in used}
            records.append(StepRecord(index=index + 1, label=f"search:{template.stage}/{template.method}",
                                      options={"per_layer": options}, metrics={},
                                      seconds=time.perf_counter() - start, peak_memory_mb=None,
                                      report=report, skipped=skipped))
        return working, records

    # ------------------------------------------------------------------ the loop
    def run(self, model: nn.Module, baseline: dict[str, float], evaluate: Any) -> tuple[nn.Module, list[StepRecord], dict[str, Any]]:
        """Search, fine-tune, evaluate and back off; returns the chosen model, its records and a summary."""
        started = time.perf_counter()
        baseline_score = self.score(model)
        baseline_cost = self.cost(model)
        knobs = self.knobs(model)
        if not knobs:
            raise RecipeError("search: none of search.methods declares a strength knob or targets any layer")
        trials = self.sensitivity(model, knobs, baseline_score, baseline_cost)
        sensitivity_seconds = time.perf_counter() - started
        target = self.target_ratio
        finetune = self.search.finetune
        attempts: list[dict[str, Any]] = []
        best: tuple[nn.Module, list[StepRecord]] | None = None
        for attempt in range(self.search.retries + 1):
            built, records, realized, chosen = self._meet(model, knobs, target, baseline_cost)
            before_ft = self.context_metric(evaluate(built))
            if finetune is not None:
                self.context.step_index = len(records) + 1
                result = self.context.run_step(built, finetune)
                built = result.model
                records.append(StepRecord(index=len(records) + 1, label=f"{finetune.stage}/{finetune.method}",
                                          options=_options_dict(finetune), metrics={}, seconds=0.0,
                                          peak_memory_mb=None, info=dict(result.info)))
            final = evaluate(built)
            records[-1].metrics = final
            met_constraints = all(row["met"] for row in check_constraints(self.context.recipe, baseline, final, self.directions))
            final_ratio = final.get(self.target_metric, realized * baseline.get(self.target_metric, 1.0))
            ratio = final_ratio / baseline[self.target_metric] if baseline.get(self.target_metric) else realized
            row = {
                "attempt": attempt + 1, "target": round(target, 4), "realized": round(ratio, 4),
                f"{self.score_metric}_before_finetune": before_ft, f"{self.score_metric}": final.get(self.score_metric),
                "finetune": _options_dict(finetune) if finetune else None,
                "target_met": ratio <= self.target_ratio + 0.02, "constraints_met": met_constraints,
                "layers": {k: v for k, v in chosen.items()},
            }
            attempts.append(row)
            log.info("search attempt %d: target %.3f realized %.3f %s=%s constraints %s", attempt + 1, target,
                     ratio, self.score_metric, final.get(self.score_metric), met_constraints)
            best = (built, records)
            if met_constraints:
                break
            if self.search.backoff in ("target", "both"):
                target = target + (1 - target) * self.search.backoff_factor
            if self.search.backoff in ("finetune", "both") and finetune is not None:
                finetune = self._longer(finetune)
        summary = {
            "target_metric": self.target_metric, "target": self.target_ratio, "metric": self.score_metric,
            "attempts": attempts, "met": bool(attempts[-1]["target_met"] and attempts[-1]["constraints_met"]),
            "target_met": bool(attempts[-1]["target_met"]), "constraints_met": bool(attempts[-1]["constraints_met"]),
            "sensitivity_seconds": sensitivity_seconds, "trials": trials, "seconds": time.perf_counter() - started,
            "sensitivity": {k.key: {str(s): p for s, p in k.points.items()} for k in knobs},
        }
        if self.search.plot and self.out_dir is not None:
            summary["plots"] = write_plots(self.out_dir, knobs, attempts, self.score_metric, self.target_metric)
        assert best is not None
        return best[0], best[1], summary

    def _longer(self, step: Step) -> Step:
        """The fine-tuning step trained twice as long, through its method's ``train_longer``."""
        plugin = self.registry.get(step.stage, step.method)
        longer = getattr(plugin, "train_longer", None)
        if longer is None:
            log.warning("search back-off: fine-tune method %r declares no train_longer(options, factor); "
                        "fine-tuning as before", step.method)
            return step
        return step.model_copy(update={"options": longer(step.options, 2.0)})

    def context_metric(self, metrics: dict[str, float]) -> float | None:
        return metrics.get(self.score_metric)

    def _meet(self, model: nn.Module, knobs: list[Knob], target: float,
              baseline_cost: float) -> tuple[nn.Module, list[StepRecord], float, dict[str, float]]:
        """Allocate for ``target``, build, measure the realized ratio and correct up to three times."""
        wanted = target
        built = records = None
        chosen: dict[str, float] = {}
        realized = 1.0
        for _ in range(4):
            chosen = allocate(knobs, baseline_cost * (1 - wanted))
            built, records = self.build(model, knobs, chosen)
            realized = self.cost(built) / baseline_cost
            if realized <= target + 0.01 or wanted <= 0.02:
                break
            wanted = max(0.01, wanted - (realized - target))
        return built, records, realized, chosen


def _relative_change(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """``sum ||a - b||^2 / sum ||b||^2`` over matching output tensors (0 when there are none)."""
    scale = sum(float(b.pow(2).sum()) for b in reference)
    if not reference or scale == 0.0:
        return 0.0
    return sum(float((a - b).pow(2).sum()) for a, b in zip(outputs, reference)) / scale


def _options_dict(step: Step | None) -> dict[str, Any]:
    if step is None:
        return {}
    opts = step.options
    return opts.model_dump(mode="json") if isinstance(opts, BaseModel) else dict(opts)
