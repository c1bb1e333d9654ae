"""Strength knobs: which Options field a method compresses by, its direction, and the grid of values tried."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ..recipe import Step


GRID_POINTS = 8


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
