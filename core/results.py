"""What steps and runs return: :class:`StepResult` and :class:`RunResult`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .tables import run_table


@dataclass
class StepResult:
    """What a stage hook returns.

    ``model`` is the model to continue with (the same object, changed in place, or a new one).
    ``report`` holds per-layer rows (dicts with the same keys), ``skipped`` the ``(layer, reason)``
    pairs a method left alone, ``info`` any summary values worth showing (JSON-serialisable), and
    ``warnings`` sentences the user should read (they appear under the run table and in the CLI).
    """

    model: nn.Module
    report: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class StepRecord:
    """One executed step as the run report keeps it."""

    index: int
    label: str
    options: dict[str, Any]
    metrics: dict[str, float]
    seconds: float
    peak_memory_mb: float | None
    report: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of :meth:`torchslim.Engine.run`: the model, the metrics of every stage, the report."""

    model: nn.Module
    recipe: Any
    baseline: dict[str, float]
    steps: list[StepRecord]
    directions: dict[str, str] = field(default_factory=dict)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    search: dict[str, Any] | None = None
    example_inputs: str = ""

    @property
    def warnings(self) -> list[str]:
        """Every step's warnings, in run order, each prefixed with its step."""
        return [f"step {r.index}: {w}" for r in self.steps for w in r.warnings]

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{"baseline": {...}, "1 compress/magnitude": {...}, ...}`` in run order."""
        out = {"baseline": dict(self.baseline)}
        for rec in self.steps:
            out[f"{rec.index} {rec.label}"] = dict(rec.metrics)
        return out

    @property
    def final(self) -> dict[str, float]:
        """The metrics after the last step (the baseline when there were no steps)."""
        return dict(self.steps[-1].metrics) if self.steps else dict(self.baseline)

    @property
    def constraints_met(self) -> bool:
        """True when every recipe constraint (and a search's target, if any) holds for the final model."""
        return all(c["met"] for c in self.constraints) and (self.search is None or self.search["target_met"])

    def table(self, tablefmt: str = "simple") -> str:
        """The before/after table of every stage, as text (tabulate)."""
        return run_table(self, tablefmt=tablefmt)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-serialisable."""
        recipe = self.recipe.to_dict() if hasattr(self.recipe, "to_dict") else self.recipe
        return {
            "recipe": recipe,
            "seed": self.seed,
            "baseline": self.baseline,
            "directions": self.directions,
            "steps": [
                {
                    "index": r.index,
                    "step": r.label,
                    "options": r.options,
                    "metrics": r.metrics,
                    "seconds": r.seconds,
                    "peak_memory_mb": r.peak_memory_mb,
                    "report": r.report,
                    "skipped": [list(s) for s in r.skipped],
                    "info": r.info,
                    "warnings": r.warnings,
                }
                for r in self.steps
            ],
            "constraints": self.constraints,
            "constraints_met": self.constraints_met,
            "search": self.search,
            "example_inputs": self.example_inputs,
        }

    def to_json(self, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
