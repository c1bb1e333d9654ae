"""The ``svd`` step's report: one row per targeted layer and the summed speed of the factorized ones."""

from __future__ import annotations

import torch
from torch import nn

from .layer import Layer



def row(layer: Layer, module: nn.Module | None, timing: tuple[float, float] | None, warning: str,
         error: float) -> dict:
    before = shape_text(layer.module.weight)
    return {
        "layer": layer.name,
        "factorization": layer.form,
        "shape_before": before,
        "shape_after": before if module is None else f"{shape_text(module.first.weight)} + {shape_text(module.second.weight)}",
        "rank": None if module is None else layer.rank,
        "macs_before": layer.macs,
        "macs_after": layer.macs if module is None else layer.factor_macs(layer.form, layer.rank),
        "rel_output_error": error,
        "latency_before_ms": None if timing is None else timing[0],
        "latency_after_ms": None if timing is None else (timing[0] if module is None else timing[1]),
        "warning": warning,
    }


def factorized_speed(report: list[dict]) -> dict[str, float]:
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


def shape_text(tensor: torch.Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape)
