"""Pre-flight check: what each step of a recipe will touch, skip or fail on, before any long run.

Every compress and accelerate step is dry-run, in order, through :meth:`torchslim.Engine.run` on a
copy of the model (fine-tune steps are listed but not run: they change values, not structure). The
check needs nothing from plugins beyond the stage hook they already implement:

- *touched* layers are found by comparing the model before and after the step (replaced modules,
  resized or changed tensors, new masks), so a plugin's own report is not trusted for it;
- *skipped* layers and their reasons are the step's :attr:`~torchslim.StepResult.skipped`;
- a step that raises is reported as "cannot handle" with its error, and the check goes on from the
  model before that step;
- the costs are measured before and after every step by the installed evaluators whose metrics are
  all lower-is-better (MACs, parameters, non-zeros, saved size, latency, and any third party's),
  exactly as a run measures them;
- the engine's own checks apply: a step whose model no longer runs on the example inputs, or whose
  outputs change shape, cannot handle this model.

>>> report = preflight(engine, model, "recipe.yaml", example_inputs=(x,))   # doctest: +SKIP
>>> print(report.table())                                                   # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from pydantic import BaseModel
from tabulate import tabulate
from torch import nn
from torch.nn.utils import parametrize

from .batches import example_inputs_from
from .errors import TorchslimError
from .recipe import Recipe, Step, step_to_dict
from .targets import is_internal

#: Step stages that are dry-run; the others (fine-tuning, deploy) are listed only.
DRY_RUN_STAGES = ("compress", "accelerate")
OK, NOT_RUN, CANNOT = "ok", "not run", "cannot handle"


@dataclass
class StepPreview:
    """What one recipe step would do: its status, touched and skipped layers, and the measured change.

    ``status`` is ``"ok"``, ``"not run"`` (fine-tune and deploy steps) or ``"cannot handle"`` (the step
    raised; ``error`` holds the message). ``touched`` maps a layer name to what changed in it;
    ``skipped`` holds the ``(layer, reason)`` pairs the method reported. ``before``/``after`` hold the
    cost metrics (``macs``, ``params``, ``size_bytes``, ...; a metric is missing where it cannot be
    measured, e.g. MACs without example inputs).
    """

    index: int
    label: str
    stage: str
    status: str
    touched: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    before: dict[str, int | None] = field(default_factory=dict)
    after: dict[str, int | None] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The preview as JSON-serialisable data."""
        return {
            "index": self.index, "step": self.label, "stage": self.stage, "status": self.status,
            "touched": dict(self.touched), "skipped": [list(s) for s in self.skipped], "error": self.error,
            "before": dict(self.before), "after": dict(self.after), "seconds": self.seconds,
        }


@dataclass
class PreflightReport:
    """The outcome of :func:`preflight`: one :class:`StepPreview` per recipe step, plus totals."""

    baseline: dict[str, float | None]
    steps: list[StepPreview]
    search: str | None = None
    metrics: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict[str, int | None]:
        """Measures after the last step that ran (the baseline when none did)."""
        ran = [s for s in self.steps if s.status == OK]
        return dict(ran[-1].after) if ran else dict(self.baseline)

    @property
    def ok(self) -> bool:
        """True when no step failed (skipped layers and not-run steps are fine)."""
        return all(s.status != CANNOT for s in self.steps)

    def ratios(self) -> dict[str, float | None]:
        """Final / baseline for every cost metric measured (None where unmeasured)."""
        return {k: _ratio(self.baseline.get(k), self.final.get(k)) for k in self.metrics}

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-serialisable data."""
        return {"ok": self.ok, "baseline": dict(self.baseline), "final": self.final, "ratios": self.ratios(),
                "steps": [s.to_dict() for s in self.steps], "search": self.search}

    def table(self, tablefmt: str = "simple", max_layers: int = 8) -> str:
        """A summary table (one row per step) followed by the touched, skipped and failing layers."""
        rows = [["baseline", "", "", "", *(_amount(self.baseline.get(k)) for k in self.metrics)]]
        for s in self.steps:
            cells = [_change(s.before.get(k), s.after.get(k)) if s.status == OK else "" for k in self.metrics]
            counts = [str(len(s.touched)), str(len(s.skipped))] if s.status == OK else ["", ""]
            rows.append([f"{s.index} {s.label}", s.status, *counts, *cells])
        text = tabulate(rows, headers=["step", "status", "touched", "skipped", *self.metrics],
                        tablefmt=tablefmt, disable_numparse=True)
        lines = []
        for s in self.steps:
            where = f"step {s.index} ({s.label})"
            if s.error:
                lines.append(f"{where} cannot handle this model: {s.error}")
            if s.touched:
                names = list(s.touched)
                shown = ", ".join(f"{n} ({s.touched[n]})" for n in names[:max_layers])
                more = f", ... {len(names) - max_layers} more" if len(names) > max_layers else ""
                lines.append(f"{where} touches: {shown}{more}")
            for layer, reason in s.skipped[:max_layers]:
                lines.append(f"{where} skips {layer}: {reason}")
            if len(s.skipped) > max_layers:
                lines.append(f"{where} skips {len(s.skipped) - max_layers} more layer(s)")
        if self.search:
            lines.append(self.search)
        return text + ("\n\n" + "\n".join(lines) if lines else "")


def preflight(engine: Any, model: nn.Module, recipe: Recipe | dict | str, example_inputs: Any = None, *,
              train_data: Iterable | None = None, eval_data: Iterable | None = None,
              seed: int = 0) -> PreflightReport:
    """Dry-run the recipe's compress/accelerate steps on copies of ``model``; report what each would do.

    ``recipe`` is anything :meth:`Engine.recipe` accepts; an invalid recipe raises
    :class:`~torchslim.RecipeError` as :meth:`Engine.run` would. ``example_inputs`` (a tensor or a
    tuple) are needed for MACs and by shape-probing methods; without them the first batch of
    ``eval_data`` or ``train_data`` is used. ``train_data`` feeds methods that calibrate on data.
    ``model`` is never changed.
    """
    validated = engine.recipe(recipe)
    raw_steps = _raw_steps(validated)
    example_inputs = example_inputs_from(example_inputs, eval_data, train_data)
    seed = validated.seed if validated.seed is not None else seed
    costs = cost_evaluators(engine.registry, validated.evaluate)
    # a preview: fewer timed runs than a real evaluation
    evaluation = validated.evaluation.model_copy(update={"latency_runs": min(validated.evaluation.latency_runs, 5)})
    data = {"train_data": train_data, "eval_data": eval_data, "example_inputs": example_inputs}

    current = model
    baseline = engine.run(model, Recipe(steps=[], evaluate=costs, evaluation=evaluation), **data).baseline
    previews: list[StepPreview] = []
    for index, (step, raw) in enumerate(zip(validated.steps, raw_steps), start=1):
        preview = StepPreview(index=index, label=step.label, stage=step.stage, status=NOT_RUN)
        previews.append(preview)
        if step.stage not in DRY_RUN_STAGES:
            continue
        preview.before = _start_measures(previews[:-1], baseline)
        single = Recipe(steps=[raw], evaluate=costs, evaluation=evaluation, seed=seed + index - 1)
        start = time.perf_counter()
        try:
            result = engine.run(current, single, **data)
        except TorchslimError as exc:
            preview.status, preview.error = CANNOT, _strip_step(_one_line(exc), step.label)
            continue
        except Exception as exc:  # noqa: BLE001 - a pre-flight check reports every failure, it never crashes
            preview.status, preview.error = CANNOT, f"{type(exc).__name__}: {_one_line(exc)}"
            continue
        finally:
            preview.seconds = time.perf_counter() - start
        record = result.steps[0]
        preview.status = OK
        preview.skipped = [tuple(s) for s in record.skipped]
        preview.touched = changed_layers(current, result.model)
        preview.after = dict(record.metrics)
        current = result.model
    search = None
    if validated.search is not None:
        methods = ", ".join(s.label for s in validated.search.methods)
        search = f"search ({methods}, target {validated.search.target}) is not dry-run: it runs after the steps"
    return PreflightReport(baseline=baseline, steps=previews, search=search, metrics=list(baseline))


def _start_measures(previews: list[StepPreview], baseline: dict[str, int | None]) -> dict[str, int | None]:
    """The measures the next step starts from: after the last step that ran, else the baseline."""
    for preview in reversed(previews):
        if preview.status == OK:
            return dict(preview.after)
    return dict(baseline)


def changed_layers(before: nn.Module, after: nn.Module) -> dict[str, str]:
    """Layer name -> what changed between two versions of a model (replaced, resized, masked, changed).

    Only modules that own tensors are compared; a parametrized tensor is compared as the module sees
    it (masks applied).
    """
    after_modules = dict(after.named_modules())
    changes: dict[str, str] = {}
    for name, old in before.named_modules():
        if is_internal(name):
            continue
        own = [n for n, _ in old.named_parameters(recurse=False)] + [n for n, _ in old.named_buffers(recurse=False)]
        if parametrize.is_parametrized(old):
            own += [n for n in old.parametrizations.keys() if n not in own]
        own = [n for n in own if n != "parametrizations"]
        if not own:
            continue
        new = after_modules.get(name)
        if new is None:
            changes[name] = "removed"
            continue
        old_cls, new_cls = _base_class(old), _base_class(new)
        if old_cls is not new_cls:
            changes[name] = f"replaced by {new_cls.__name__}"
            continue
        notes = [note for tensor in own if (note := _tensor_change(old, new, tensor))]
        if notes:
            changes[name] = "; ".join(notes)
    return changes


def _tensor_change(old: nn.Module, new: nn.Module, name: str) -> str | None:
    with torch.no_grad():
        a, b = getattr(old, name, None), getattr(new, name, None)
    if not isinstance(a, torch.Tensor):
        return None
    if not isinstance(b, torch.Tensor):
        return f"{name} removed"
    if a.shape != b.shape:
        return f"{name} {'x'.join(map(str, a.shape))} -> {'x'.join(map(str, b.shape))}"
    newly_masked = parametrize.is_parametrized(new, name) and not parametrize.is_parametrized(old, name)
    if not newly_masked and torch.equal(a, b.to(a.device)):
        return None
    if b.is_floating_point() and b.numel():
        zeros = float((b == 0).float().mean())
        if zeros > float((a == 0).float().mean()):
            return f"{name} {'masked' if newly_masked else 'zeroed'} to {zeros:.0%} zeros"
    return f"{name} changed"


def _base_class(module: nn.Module) -> type:
    # parametrize swaps a module's class for a generated subclass ("ParametrizedLinear")
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _strip_step(message: str, label: str) -> str:
    """Drop the engine's "step 1 (label)" prefix: the dry run is step 1 of its own one-step recipe."""
    for prefix in (f"step 1 ({label}) failed in ", f"step 1 ({label}): "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def cost_evaluators(registry: Any, listed: Iterable[str] | None) -> list[str]:
    """Evaluators whose metrics are all lower-is-better (costs): the default ones plus those ``listed``."""
    names = list(registry.default_evaluators()) + [n for n in (listed or []) if n not in registry.default_evaluators()]
    costs = []
    for name in names:
        metrics = getattr(registry.infos[name].obj, "metrics", {}) or {}
        if metrics and all(direction == "lower" for direction in metrics.values()):
            costs.append(name)
    return costs


def _raw_steps(validated: Recipe) -> list[Step]:
    """The steps with options as the user wrote them (only the fields they set), for re-validation."""
    steps = []
    for step in validated.steps:
        options = step.options
        if isinstance(options, BaseModel):
            options = options.model_dump(exclude_unset=True)
        steps.append(Step.model_validate(step_to_dict(step.model_copy(update={"options": options}))))
    return steps


def _ratio(before: int | None, after: int | None) -> float | None:
    return None if not before or after is None else after / before


def _amount(value: int | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        value = int(value)
    else:
        return f"{value:.3g}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _change(before: int | None, after: int | None) -> str:
    ratio = _ratio(before, after)
    return _amount(after) + (f" ({ratio:.2f}x)" if ratio is not None else "")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
