"""The ``magnitude`` pipeline: :func:`prune` checks, schedules rounds, prunes and reports."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import ValidationError
from torch import nn

import torchslim
from torchslim.context import RunContext
from torchslim.errors import ModelError, RecipeError
from torchslim.recipe import Targets, format_validation_error

from .options import MagnitudeOptions
from .report import effective_zeros, step_report
from .rounds import prune_round
from .tensors import DEFAULT_TYPES, check_finite, collect_tensors


def cubic_schedule(final: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``rounds`` rounds: ``s_f + (s_i - s_f) (1 - r/R)^3`` (Zhu & Gupta, 2017)."""
    initial = min(initial, final)
    return [final + (initial - final) * (1 - r / rounds) ** 3 for r in range(1, rounds + 1)]


def prune(
    model: nn.Module,
    options: MagnitudeOptions | dict[str, Any] | None = None,
    *,
    targets: Targets | dict[str, Any] | None = None,
    context: RunContext | None = None,
    calibration: Iterable[Any] | None = None,
    **kwargs: Any,
) -> torchslim.StepResult:
    """Prune ``model`` in place as the ``magnitude`` method does and return a :class:`StepResult`.

    ``options`` (or keyword arguments) are :class:`MagnitudeOptions`; ``targets`` selects modules as
    in a recipe. Calibration inputs come from ``calibration`` (an iterable of model inputs) or else
    ``context.calibration_batches``. Everything is checked and every mask computed before the model is
    changed (with sequential reconstruction, tensors already changed are restored on failure), so a
    failure leaves the model as it was, fine-tuning between rounds aside.
    """
    opts = _options(options, kwargs)
    targets = Targets.model_validate(targets) if isinstance(targets, dict) else targets
    context = context or RunContext()
    found, skipped = collect_tensors(model, targets, DEFAULT_TYPES, include_bias=opts.include_bias)
    if not found:
        why = "".join(f"; {layer}: {reason}" for layer, reason in skipped[:3])
        raise ModelError(
            f"magnitude: no weight tensor to prune among the targeted modules; check 'targets' "
            f"(include/exclude globs, types){why}"
        )
    check_finite(found)
    before = {t.name: effective_zeros(t)[0] for t in found}
    total_before = sum(before.values()) / max(1, sum(t.stored.numel() for t in found))
    if opts.threshold is not None or opts.n_of_m is not None:
        schedule: list[float | None] = [None]
    else:
        schedule = list(cubic_schedule(opts.sparsity, opts.rounds, total_before))
    notes: dict[str, dict[str, Any]] = {}
    calibration_info: dict[str, Any] = {}
    exact = True
    if opts.sparsity > 0 or opts.threshold is not None or opts.n_of_m is not None:
        for index, fraction in enumerate(schedule, start=1):
            if index > 1:
                if opts.between is not None:
                    model = _finetune(model, opts.between, context)
                    found, _ = collect_tensors(model, targets, DEFAULT_TYPES, include_bias=opts.include_bias)
                check_finite(found)
            round_skipped, round_notes, round_exact, calibration_info = prune_round(
                model, found, opts, fraction, context, calibration)
            notes.update(round_notes)
            exact = exact and round_exact
            if index == len(schedule):
                skipped += round_skipped
    report, info = step_report(found, before, notes, opts, schedule, exact)
    info.update(calibration_info)
    return torchslim.StepResult(model=model, report=report, skipped=skipped, info=info)


def _options(options: MagnitudeOptions | dict[str, Any] | None, kwargs: dict[str, Any]) -> MagnitudeOptions:
    if isinstance(options, MagnitudeOptions) and not kwargs:
        return options
    raw = options.model_dump(exclude_unset=True) if isinstance(options, MagnitudeOptions) else dict(options or {})
    raw.update(kwargs)
    try:
        return MagnitudeOptions.model_validate(raw)
    except ValidationError as exc:
        text = format_validation_error(exc, raw, prefix="magnitude")
        raise RecipeError(text.replace("invalid recipe:\n  ", "")) from None


def _finetune(model: nn.Module, between: dict[str, Any], context: RunContext) -> nn.Module:
    if context.runner is None:
        raise RecipeError(
            "magnitude: 'between' fine-tunes through the engine; run the recipe with torchslim.Engine "
            "(or drop 'between' when calling prune() directly)"
        )
    result = context.run_step(model, {"finetune": dict(between)})
    return result.model if hasattr(result, "model") else result
