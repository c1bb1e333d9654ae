"""Recipe constraints checked against the baseline: ``max_drop`` and ``max_ratio`` per metric."""

from __future__ import annotations

from typing import Any

from .recipe import Recipe


def check_constraints(recipe: Recipe, baseline: dict[str, float], final: dict[str, float],
                      directions: dict[str, str]) -> list[dict[str, Any]]:
    """Evaluate the recipe's constraints; one dict per constraint with ``met`` and the figures."""
    rows = []
    for metric, allowed in recipe.constraints.max_drop.items():
        before, after = baseline.get(metric), final.get(metric)
        if before is None or after is None:
            rows.append({"constraint": f"max_drop.{metric}", "limit": allowed, "value": None, "met": False})
            continue
        worse = before - after if directions.get(metric, "higher") == "higher" else after - before
        rows.append({"constraint": f"max_drop.{metric}", "limit": allowed, "value": worse,
                     "met": worse <= allowed + 1e-12})
    for metric, allowed in recipe.constraints.max_ratio.items():
        before, after = baseline.get(metric), final.get(metric)
        ratio = None if not before or after is None else after / before
        rows.append({"constraint": f"max_ratio.{metric}", "limit": allowed, "value": ratio,
                     "met": ratio is not None and ratio <= allowed + 1e-12})
    return rows
