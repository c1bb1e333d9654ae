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
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn

from .batches import float_tensors, split_batch
from .checkpoint import model_fingerprint, write_json_atomic
from .errors import RecipeError
from .recipe import Search, Step, Targets
from .results import StepRecord, StepResult
from .targets import WEIGHT_LAYERS, select_modules

if TYPE_CHECKING:  # pragma: no cover
    from .context import RunContext
    from .engine import Engine

log = logging.getLogger("torchslim")
GRID_POINTS = 8
#: Savings steps of the allocation knapsack: the target is met within 1/ALLOCATION_BINS of the saving.
ALLOCATION_BINS = 400
#: Weight of a trial's relative output distortion next to its metric loss in the allocation: small, so
#: it only orders choices the (coarse, often zero) calibration metric cannot tell apart.
DISTORTION_WEIGHT = 1e-3
#: Bumped when cached sensitivity entries change meaning, so older caches are not reused.
CACHE_VERSION = 2


def strength_field(options_model: type[BaseModel] | None) -> str | None:
    """The name of the Options field marked as the method's strength knob, or None."""
    found = strength_knob(options_model)
    return found[0] if found else None


def strength_knob(options_model: type[BaseModel] | None) -> tuple[str, str] | None:
    """``(field, direction)`` of the strength knob: ``"higher"`` (default) when a larger value compresses
    more (``sparsity``), ``"lower"`` when a smaller one does (``rank_ratio``); None without a knob.

    Declared as ``json_schema_extra={"strength": True}`` (or ``"higher"``) / ``{"strength": "lower"}``.
    """
    if options_model is None:
        return None
    for name, info in options_model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("strength"):
            return name, "lower" if extra["strength"] == "lower" else "higher"
    return None


def default_grid(options_model: type[BaseModel], knob: str) -> list[float]:
    """``GRID_POINTS`` strengths spread over the knob's allowed range (from its pydantic bounds)."""
    low, high = 0.0, 1.0
    for meta in options_model.model_fields[knob].metadata:
        for attr, bound in (("ge", "low"), ("gt", "low"), ("le", "high"), ("lt", "high")):
            value = getattr(meta, attr, None)
            if value is not None:
                if bound == "low":
                    low = float(value)
                else:
                    high = float(value)
    # Strength means "compress more": keep strictly inside open bounds and away from the no-op end.
    span = high - low
    return [round(low + span * (i + 1) / (GRID_POINTS + 1), 4) for i in range(GRID_POINTS)]


def exact_glob(name: str) -> str:
    """A glob matching exactly ``name`` (brackets escaped)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


@dataclass
class Knob:
    """One searchable (method template, layer) pair."""

    template_index: int
    template: Step
    knob: str
    layer: str
    grid: list[float]  # knob values ordered from the weakest compression to the strongest
    points: dict[float, dict[str, float]] = field(default_factory=dict)  # strength -> {loss, saving}

    @property
    def key(self) -> str:
        return f"{self.template_index}:{self.template.method}:{self.layer}"


class Searcher:
    """Runs the search block of a recipe; used by :meth:`Engine.run` when ``recipe.search`` is set."""

    def __init__(self, engine: "Engine", search: Search, context: "RunContext",
                 evaluators: list[str], out_dir: Path | None) -> None:
        self.engine = engine
        self.search = search
        self.context = context
        self.evaluators = evaluators
        self.out_dir = out_dir
        (self.target_metric, self.target_ratio), = search.target.items()
        self.directions = engine.registry.directions()
        self.score_metric = search.metric or next(iter(context.recipe.constraints.max_drop), "accuracy")
        if self.score_metric not in self.directions:
            raise RecipeError(f"search.metric={self.score_metric!r} is produced by no installed evaluator")
        self._layer_inputs: dict[str, tuple] | None = None

    # ------------------------------------------------------------------ measuring
    def _calibration_context(self) -> "RunContext":
        ctx = copy.copy(self.context)
        ctx.evaluation = self.context.evaluation.model_copy(update={
            "max_eval_batches": self.search.calibration_batches, "latency_runs": 5, "latency_warmup": 1})
        return ctx

    def score(self, model: nn.Module) -> float:
        """The sensitivity metric on the calibration subset."""
        names = [n for n in self.evaluators if self.score_metric in getattr(
            self.engine.registry.infos[n].obj, "metrics", {})]
        model.eval()
        with torch.no_grad():
            metrics = self.engine.registry.evaluate(names, model, self._calibration_context())
        return float(metrics[self.score_metric])

    def loss(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (never below zero)."""
        worse = baseline - value if self.directions.get(self.score_metric, "higher") == "higher" else value - baseline
        return max(0.0, worse)

    def cost(self, model: nn.Module, layer: str | None = None) -> float:
        """The target metric of the whole model (or, for latency, of one layer on its real input)."""
        from .measure import count_macs, count_nonzeros, count_params, measure_latency

        inputs = self.context.example_inputs
        if self.target_metric == "macs":
            return float(count_macs(model, inputs))
        if self.target_metric == "params":
            return float(count_params(model))
        if self.target_metric == "nonzeros":
            return float(count_nonzeros(model))
        if self.target_metric == "size_bytes":
            from .io import saved_size_bytes

            return float(saved_size_bytes(model))
        threads = self.context.evaluation.threads
        if layer is None:
            return measure_latency(model, inputs, runs=self.context.evaluation.latency_runs,
                                   warmup=self.context.evaluation.latency_warmup, threads=threads)
        module = model.get_submodule(layer)
        return measure_latency(module, self.layer_inputs()[layer], runs=15, warmup=2, threads=threads)

    def layer_inputs(self) -> dict[str, tuple]:
        """The positional inputs every module received on the example inputs (captured once)."""
        if self._layer_inputs is None:
            captured: dict[str, tuple] = {}
            model = self.context.original_model
            hooks = [m.register_forward_pre_hook(
                lambda mod, args, name=name: captured.setdefault(name, tuple(a.detach() for a in args)))
                for name, m in model.named_modules() if name]
            try:
                with torch.no_grad():
                    self.context.forward(model, tuple(self.context.example_inputs))
            finally:
                for hook in hooks:
                    hook.remove()
            self._layer_inputs = captured
        return self._layer_inputs

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
            plugin = self.engine.registry.get(template.stage, template.method)
            options_model = getattr(plugin, "Options", None)
            found = strength_knob(options_model)
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
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sensitivity", unit="trial", disable=not sys.stderr.isatty(), leave=False)
        layer_cost: dict[str, float] = {}
        reference = self.outputs(model) if todo else []
        for knob, strength in todo:
            trial, _ = self.apply(_private_copy(model), knob, strength)
            loss = self.loss(baseline_score, self.score(trial))
            distortion = _relative_change(self.outputs(trial), reference)
            if self.target_metric == "latency_ms":
                if knob.layer not in layer_cost:
                    layer_cost[knob.layer] = self.cost(model, knob.layer)
                saving = layer_cost[knob.layer] - self.cost(trial, knob.layer)
            else:
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
        digest.update(model_fingerprint(model).encode())
        for batch in self._calibration_batches():
            for tensor in batch:
                if isinstance(tensor, torch.Tensor):
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        setup = {"version": CACHE_VERSION,
                 "methods": [m.model_dump(mode="json") for m in self.search.methods], "grid": self.search.grid,
                 "target": self.target_metric, "metric": self.score_metric,
                 "batches": self.search.calibration_batches, "evaluators": self.evaluators}
        digest.update(json.dumps(setup, sort_keys=True, default=str).encode())
        root = Path(self.search.cache_dir) if self.search.cache_dir else _default_cache_dir()
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

    # ------------------------------------------------------------------ allocation
    @staticmethod
    def allocate(knobs: list[Knob], needed: float, resolution: int = ALLOCATION_BINS) -> dict[str, float]:
        """The per-layer strengths saving at least ``needed`` at the least summed predicted loss.

        An exact multiple-choice knapsack (each layer: untouched or one grid strength) solved by
        dynamic programming over savings counted in ``needed / resolution`` steps, rounded down, so the
        chosen savings really add up to ``needed``. Each point's loss is its metric loss, ties broken by
        its output distortion (``DISTORTION_WEIGHT``) and then by less overshoot. Losses and savings
        are taken as additive across layers; the realized cost is measured afterwards and corrected.
        When the target is out of reach every layer gets the strength that saves the most.

        Returns ``{knob.key: strength}`` for the knobs that are used.
        """
        if needed <= 0 or not knobs:
            return {}
        unit = needed / resolution
        options = []
        for knob in knobs:
            choices = []
            for strength in knob.grid:
                point = knob.points[strength]
                if point["saving"] > 0:
                    cost = point["loss"] + DISTORTION_WEIGHT * point.get("distortion", 0.0)
                    choices.append((strength, min(resolution, int(point["saving"] / unit)), cost, point["saving"]))
            options.append(choices)
        best = [0.0] + [math.inf] * resolution        # least cost reaching exactly b steps (b = resolution: at least)
        trail: list[list[tuple[int, int]]] = []      # per knob and state: (choice index or -1, previous state)
        for choices in options:
            new, back = list(best), [(-1, b) for b in range(resolution + 1)]
            for index, (_, units, cost, saving) in enumerate(choices):
                tie = 1e-12 * saving
                for b, value in enumerate(best):
                    if value == math.inf:
                        continue
                    reach = min(resolution, b + units)
                    candidate = value + cost + tie
                    if candidate < new[reach]:
                        new[reach], back[reach] = candidate, (index, b)
            best = new
            trail.append(back)
        if best[resolution] == math.inf:
            return {k.key: max(k.grid, key=lambda s: k.points[s]["saving"]) for k in knobs
                    if any(k.points[s]["saving"] > 0 for s in k.grid)}
        chosen: dict[str, float] = {}
        state = resolution
        for knob, choices, back in zip(reversed(knobs), reversed(options), reversed(trail)):
            index, state = back[state]
            if index >= 0:
                chosen[knob.key] = choices[index][0]
        return chosen

    def build(self, model: nn.Module, knobs: list[Knob], chosen: dict[str, float]) -> tuple[nn.Module, list[StepRecord]]:
        """Apply an allocation to a copy of ``model``: one record per method template."""
        working = _private_copy(model)
        records = []
        for index, template in enumerate(self.search.methods):
            start = time.perf_counter()
            report: list[dict[str, Any]] = []
            skipped: list[tuple[str, str]] = []
            used = [k for k in knobs if k.template_index == index and k.key in chosen]
            if strength_field(getattr(self.engine.registry.get(template.stage, template.method), "Options", None)) is None:
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
            met_constraints = _constraints_met(self.context.recipe, baseline, final, self.directions)
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
                finetune = _longer(finetune)
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

    def context_metric(self, metrics: dict[str, float]) -> float | None:
        return metrics.get(self.score_metric)

    def _meet(self, model: nn.Module, knobs: list[Knob], target: float,
              baseline_cost: float) -> tuple[nn.Module, list[StepRecord], float, dict[str, float]]:
        """Allocate for ``target``, build, measure the realized ratio and correct up to three times."""
        if self.target_metric == "latency_ms":
            base_total = sum(self.cost(model, layer) for layer in {k.layer for k in knobs})
            base_model_latency = baseline_cost
        wanted = target
        built = records = None
        chosen: dict[str, float] = {}
        realized = 1.0
        for _ in range(4):
            if self.target_metric == "latency_ms":
                # Layer savings are measured on layers alone; scale to the whole model's latency.
                needed = baseline_cost * (1 - wanted) * (base_total / max(base_model_latency, 1e-9))
                needed = min(needed, base_total)
            else:
                needed = baseline_cost * (1 - wanted)
            chosen = self.allocate(knobs, needed)
            built, records = self.build(model, knobs, chosen)
            realized = self.cost(built) / baseline_cost
            if realized <= target + 0.01 or wanted <= 0.02:
                break
            wanted = max(0.01, wanted - (realized - target))
        return built, records, realized, chosen


class SensitivityCache:
    """A JSON file of ``{knob_key: {strength: {"loss", "saving"}}}``, rewritten atomically per entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, dict[str, float]]] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("sensitivity cache %s is corrupt; recomputing", path)

    def get(self, key: str, strength: float) -> dict[str, float] | None:
        return self.data.get(key, {}).get(repr(float(strength)))

    def put(self, key: str, strength: float, value: dict[str, float]) -> None:
        self.data.setdefault(key, {})[repr(float(strength))] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


def write_plots(out_dir: Path, knobs: list[Knob], attempts: list[dict[str, Any]], metric: str,
                target_metric: str) -> list[str]:
    """Sensitivity curves per layer and metric-vs-cost of every attempt, as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed (pip install 'torchslim[plot]'); no search plots written")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for knob in knobs:
        xs = sorted(knob.points)
        ax.plot(xs, [knob.points[x]["loss"] for x in xs], marker="o", label=f"{knob.template.method}:{knob.layer}")
    ax.set_xlabel("strength")
    ax.set_ylabel(f"{metric} loss (calibration)")
    ax.set_title("per-layer sensitivity")
    if len(knobs) <= 20:
        ax.legend(fontsize=7)
    sens = out_dir / "sensitivity.png"
    fig.tight_layout()
    fig.savefig(sens, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([a["realized"] for a in attempts], [a[metric] for a in attempts], marker="s")
    for a in attempts:
        ax.annotate(f"#{a['attempt']}", (a["realized"], a[metric]))
    ax.set_xlabel(f"{target_metric} ratio to baseline")
    ax.set_ylabel(metric)
    ax.set_title("search attempts")
    att = out_dir / "attempts.png"
    fig.tight_layout()
    fig.savefig(att, dpi=100)
    plt.close(fig)
    return [str(sens), str(att)]


def _relative_change(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """``sum ||a - b||^2 / sum ||b||^2`` over matching output tensors (0 when there are none)."""
    scale = sum(float(b.pow(2).sum()) for b in reference)
    if not reference or scale == 0.0:
        return 0.0
    return sum(float((a - b).pow(2).sum()) for a, b in zip(outputs, reference)) / scale


def _private_copy(model: nn.Module) -> nn.Module:
    from .engine import _private_copy as private_copy

    return private_copy(model)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torchslim"


def _options_dict(step: Step | None) -> dict[str, Any]:
    if step is None:
        return {}
    opts = step.options
    return opts.model_dump(mode="json") if isinstance(opts, BaseModel) else dict(opts)


def _longer(step: Step) -> Step:
    """The same fine-tuning step with twice the epochs (or steps)."""
    options = _options_dict(step)
    for key in ("epochs", "steps"):
        if options.get(key):
            options[key] = int(options[key]) * 2
            break
    return step.model_copy(update={"options": type(step.options).model_validate(options)
                                   if isinstance(step.options, BaseModel) else options})


def _constraints_met(recipe: Any, baseline: dict[str, float], final: dict[str, float],
                     directions: dict[str, str]) -> bool:
    from .engine import check_constraints

    return all(row["met"] for row in check_constraints(recipe, baseline, final, directions))
