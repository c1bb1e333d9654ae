"""Strength knobs: which Options field a method compresses by, its direction, and the grid of values tried."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..recipe import Step
from ..registry import strength_of

GRID_POINTS = 8


def strength_field(options_model: type[BaseModel] | None, plugin: Any = None) -> str | None:
    """The name of the method's strength knob (its ``strength`` attribute or the marked Options field), or None."""
    found = strength_knob(options_model, plugin)
    return found[0] if found else None


def strength_knob(options_model: type[BaseModel] | None, plugin: Any = None) -> tuple[str, str] | None:
    """``(field, direction)`` of the strength knob: ``"higher"`` when a larger value compresses more
    (``sparsity``), ``"lower"`` when a smaller one does (``rank_ratio``); None without a knob.

    The contract's one reading of the declaration (:func:`torchslim.registry.strength_of`): the plugin's
    ``strength = (field, direction)`` attribute, or ``json_schema_extra={"strength": True | "lower"}``.
    """
    return strength_of(options_model, plugin)


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
