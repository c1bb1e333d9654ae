"""Comparing runtimes: one compressed model deployed in every installed runtime, each measured and checked.

``torchslim deploy`` prints what :func:`compare_runtimes` returns: a row per runtime and precision
with latency, artifact size and the task metric, each measured on the artifact, whether the recipe's
constraints hold for it, and the runtimes that cannot run here with the reason.
"""

from __future__ import annotations

import typing
from typing import Any, Iterable

import torch
from torch import nn

from ..batches import example_inputs_from
from ..constraints import check_constraints
from ..context import RunContext
from ..errors import TorchslimError
from ..recipe import Recipe
from ..results import RunResult
from ..runtime import deploy, unavailable

#: The metrics a comparison row shows, when the recipe's evaluators produce them.
SHOWN = ("latency_ms", "size_bytes", "accuracy")


def precisions_of(plugin: Any) -> list[str]:
    """The precisions a runtime's ``Options`` allow (its ``precision`` field's choices), else ``["fp32"]``."""
    field = getattr(getattr(plugin, "Options", None), "model_fields", {}).get("precision")
    if field is None:
        return ["fp32"]
    choices = typing.get_args(field.annotation)
    return [str(choice) for choice in choices] or [str(field.default)]


def compare_runtimes(engine: Any, result: RunResult, *, example_inputs: Any = None, train_data: Iterable | None = None,
                     eval_data: Iterable | None = None, runtimes: list[str] | None = None,
                     precisions: list[str] | None = None, loss_fn: Any = None, metric_fn: Any = None) -> list[dict]:
    """Deploy ``result.model`` in each runtime (default: every installed ``deploy`` method) and measure it.

    Returns one row per (runtime, precision): ``status`` ("ok", "skipped: why" or "failed: why"), the
    measured metrics, ``speedup`` (eager latency / artifact latency) and ``meets`` (every constraint of
    ``result.recipe`` holds against the run's baseline). The first row is the eager model itself.
    """
    recipe: Recipe = result.recipe
    installed = engine.registry.methods("deploy")
    wanted = runtimes or installed
    unknown = [name for name in wanted if name not in installed]
    if unknown:
        raise TorchslimError(f"unknown runtime(s) {', '.join(unknown)}; installed: {', '.join(installed) or 'none'}")
    inputs = example_inputs_from(example_inputs, eval_data, train_data)
    context = RunContext(train_data=train_data, eval_data=eval_data, example_inputs=inputs, recipe=recipe,
                         evaluation=recipe.evaluation, loss_fn=loss_fn, metric_fn=metric_fn)
    directions = dict(engine.registry.directions())
    eager = _measure(engine, result.model, recipe, context)
    rows = [_row("eager", "fp32", "ok", eager, eager, recipe, result.baseline, directions)]
    for name in wanted:
        plugin = engine.registry.get("deploy", name)
        allowed = precisions_of(plugin)
        for precision in [p for p in (precisions or allowed) if p in allowed]:
            reason = unavailable(name, engine.registry)
            if reason is not None:
                rows.append(_row(name, precision, f"skipped: {reason}", {}, eager, recipe, result.baseline, directions))
                continue
            options = {"precision": precision} if "precision" in getattr(plugin.Options, "model_fields", {}) else {}
            try:
                artifact = deploy(result.model, inputs, name, registry=engine.registry, train_data=train_data,
                                  seed=result.seed, **options)
                metrics = _measure(engine, artifact, recipe, context)
            except Exception as exc:  # noqa: BLE001 - one runtime failing must not hide the others
                status = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                rows.append(_row(name, precision, status, {}, eager, recipe, result.baseline, directions))
                continue
            rows.append(_row(name, precision, "ok", metrics, eager, recipe, result.baseline, directions))
    return rows


def _measure(engine: Any, model: nn.Module, recipe: Recipe, context: RunContext) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return engine.registry.evaluate(recipe.evaluate, model, context)


def _row(runtime: str, precision: str, status: str, metrics: dict[str, float], eager: dict[str, float],
         recipe: Recipe, baseline: dict[str, float], directions: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"runtime": runtime, "precision": precision}
    for key in SHOWN:
        row[key] = metrics.get(key)
    latency, reference = metrics.get("latency_ms"), eager.get("latency_ms")
    row["speedup"] = reference / latency if latency and reference else None
    checks = check_constraints(recipe, baseline, metrics, directions) if metrics else []
    row["meets"] = (all(check["met"] for check in checks) if metrics else None)
    row["status"] = status
    return row
