"""The ``magnitude`` step's report: per-tensor sparsity before and after, and the step summary."""

from __future__ import annotations

from typing import Any

import torch

from torchslim.masks import get_mask

from . import select
from .options import MagnitudeOptions
from .tensors import PrunableTensor


def step_report(found: list[PrunableTensor], before: dict[str, int], notes: dict[str, dict[str, Any]],
                opts: MagnitudeOptions, schedule: list[float | None], exact: bool) -> tuple[list[dict], dict]:
    """One row per pruned tensor and the ``info`` summary (achieved sparsity, schedule, bounds met)."""
    report, zeros, total = [], 0, 0
    for target in found:
        n_zero, shape = effective_zeros(target)
        numel = shape.numel()
        zeros, total = zeros + n_zero, total + numel
        note = notes.get(target.name, {})
        report.append({
            "layer": target.module_name,
            "tensor": target.param_name,
            "shape": list(shape),
            "sparsity_before": round(before.get(target.name, 0) / max(1, numel), 6),
            "sparsity_after": round(n_zero / max(1, numel), 6),
            "kept": numel - n_zero,
            "criterion": note.get("criterion", opts.criterion if opts.sparsity > 0 else "-"),
            "reconstructed": note.get("reconstructed", False),
            "selection": note.get("selection", "score"),
        })
    total_before = sum(before.values()) / max(1, sum(t.stored.numel() for t in found))
    info = {
        "pattern": opts.pattern,
        "scope": opts.scope,
        "criterion": opts.criterion,
        "selection": opts.selection if opts.sweeps else "score",
        "allocation": opts.allocation,
        "target_sparsity": None if opts.threshold is not None else
        (1 - opts.n_of_m[0] / opts.n_of_m[1] if opts.n_of_m else opts.sparsity),
        "threshold": opts.threshold,
        "sparsity_before": round(total_before, 6),
        "sparsity": round(zeros / max(1, total), 6),
        "schedule": [round(s, 6) for s in schedule if s is not None],
        "pruned_tensors": len(found),
        "bounds_met_exactly": exact,
    }
    return report, info


def _zeros(tensor: torch.Tensor) -> int:
    return tensor.numel() - int(torch.count_nonzero(tensor))


def effective_zeros(target: PrunableTensor) -> tuple[int, torch.Size]:
    """Zeros and shape of ``target`` as its module sees it, without a full-size product for a masked tensor.

    With a single :class:`Mask` on the tensor, ``stored * mask`` is counted a block of rows at a time
    (the same products the parametrization computes); anything else is read through the module.
    """
    mask = get_mask(target.module, target.param_name)
    if mask is None or mask.dim() == 0 or len(target.module.parametrizations[target.param_name]) != 1:
        effective = target.effective()  # a plain parameter is read as is, without a copy
        return _zeros(effective), effective.shape
    stored = target.stored.detach()
    step = max(1, select.CHUNK // max(1, stored[0].numel()))
    kept = sum(int(torch.count_nonzero(stored[i:i + step] * mask[i:i + step])) for i in range(0, stored.shape[0], step))
    return stored.numel() - kept, stored.shape
