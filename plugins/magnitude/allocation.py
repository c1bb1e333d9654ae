"""Per-tensor sparsity: spread a sparsity target over the tensors, where it costs least.

``allocation: sensitivity`` measures, per tensor with calibration Gram matrices:

1. its relative output error ``E(s) = tr(dW H dW^T) / tr(W H W^T)`` after pruning it alone, the way the
   step prunes (criterion, reconstruction, selection), at the target and 0.1 and 0.2 either side;
2. how much the *model's* output moves when that tensor alone is pruned at the target (one forward
   pass over a few calibration batches), which turns ``E`` into a model-level cost ``w * E(s)``.

Then each tensor gets the sparsity (on a 0.05 grid, within 0.3 of the target and within
``min_sparsity``/``max_sparsity``) minimising the summed cost while the weight-weighted mean stays at
the target: the cheapest extra zeros first, as a Lagrangian allocation does. On MiniLM it keeps query
and key projections sparser and value/output projections and the last block denser.

``allocation: owl`` (Yin et al. 2023) gives each repeated block less sparsity the more of its
activation-weighted scores are outliers (above 5x their tensor's mean), spread over +-0.08.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import torch
from torch import nn

from torchslim.batches import call_model, float_tensors
from torchslim.calibration import find_blocks, sum_over_ranks
from torchslim.errors import ModelError
from torchslim.measure import eval_mode

from .calibration import InputStats
from .keep import choose_masks
from .options import MagnitudeOptions
from .plan import layer_gram, reconstruct
from .reconstruct import output_error
from .scores import score_targets
from .tensors import PrunableTensor

#: Sparsities measured around the target, the reach of the allocation around it, and its grid.
LEVELS, SPAN, GRID = (-0.2, -0.1, 0.0, 0.1, 0.2), 0.3, 0.05
#: Calibration batches each probe forward pass runs (per rank).
PROBE_BATCHES = 4
#: OWL's outlier multiple and spread.
OWL_M, OWL_LAMBDA = 5.0, 0.08


def allocate(model: nn.Module, found: list[PrunableTensor], stats: dict[int, InputStats], opts: MagnitudeOptions,
             fraction: float, batches: list[Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-tensor sparsities (empty for ``uniform``) and what the allocation measured, for the report."""
    if opts.allocation == "sensitivity":
        return sensitivity_fractions(model, found, stats, opts, fraction, batches)
    if opts.allocation == "owl":
        return owl_fractions(model, found, stats, opts, fraction), {}
    return {}, {}


def pruned_matrix(target: PrunableTensor, stats: dict[int, InputStats], opts: MagnitudeOptions,
                  fraction: float) -> torch.Tensor:
    """``target``'s weights (``[out, in, ...]``) pruned alone at ``fraction`` as the step would prune them."""
    notes: dict[str, dict[str, Any]] = {}
    scores = score_targets([target], opts, stats, notes)
    keep, _, _ = choose_masks([target], scores, opts, fraction)
    mask = keep.get(target.name)
    weight = target.matrix()
    if mask is None:
        return weight
    done = reconstruct(target, mask, stats, opts) if opts.reconstruct else None
    return done[0] if done is not None else weight * mask


def sensitivity_fractions(model: nn.Module, found: list[PrunableTensor], stats: dict[int, InputStats],
                          opts: MagnitudeOptions, fraction: float,
                          batches: list[Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The measured allocation (see the module docstring)."""
    lo_all, hi_all = max(opts.min_sparsity, 0.0), min(opts.max_sparsity, 0.99)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    at_target: dict[str, torch.Tensor] = {}
    for target in found:
        gram = layer_gram(target, stats)
        if gram is None:
            continue
        weight = target.matrix()
        total = output_error(weight.reshape(weight.shape[0], -1), gram)
        if total <= 0:
            continue
        levels = sorted({round(min(hi_all, max(lo_all, fraction + d)), 4) for d in LEVELS})
        errors = []
        for level in levels:
            new = pruned_matrix(target, stats, opts, level)
            if level == round(fraction, 4):
                at_target[target.name] = new
            errors.append(output_error((new - weight).reshape(weight.shape[0], -1), gram) / total)
        curves[target.name] = (levels, errors)
    losses = _probe(model, [t for t in found if t.name in at_target], at_target, batches[:PROBE_BATCHES])
    weights = {}
    for name, (levels, errors) in curves.items():
        own = _interpolate(levels, errors, fraction)
        weights[name] = losses.get(name, 0.0) / own if own > 0 else 0.0
    sizes = {t.name: t.stored.numel() for t in found if t.name in curves}
    chosen = spread(curves, weights, sizes, fraction, (max(lo_all, fraction - SPAN), min(hi_all, fraction + SPAN)))
    return chosen, {"sensitivity": {n: round(w, 6) for n, w in weights.items()}}


def _probe(model: nn.Module, targets: list[PrunableTensor], pruned: dict[str, torch.Tensor],
           batches: list[Any]) -> dict[str, float]:
    """Relative squared change of the model's outputs with each target alone pruned (summed over ranks)."""
    if not targets or not batches:
        return {}
    with eval_mode(model), torch.no_grad():
        reference = [float_tensors(call_model(model, b)) for b in batches]
        changes = torch.zeros(len(targets) + 1, dtype=torch.float64)
        changes[-1] = sum(float(t.pow(2).sum()) for ref in reference for t in ref)
        for i, target in enumerate(targets):
            saved = target.stored.detach().clone()
            try:
                target.stored.copy_(target.stored_layout(pruned[target.name]))
                for batch, ref in zip(batches, reference):
                    out = float_tensors(call_model(model, batch))
                    changes[i] += sum(float((a - b).pow(2).sum()) for a, b in zip(out, ref))
            finally:
                target.stored.copy_(saved)
    sum_over_ranks([changes])
    scale = float(changes[-1]) or 1.0
    return {t.name: float(changes[i]) / scale for i, t in enumerate(targets)}


def _interpolate(levels: list[float], errors: list[float], s: float) -> float:
    """``E(s)`` from the measured points, linear in ``log E`` (extrapolated past the ends)."""
    logs = [math.log(max(e, 1e-30)) for e in errors]
    if len(levels) == 1:
        return errors[0]
    i = 1
    while i < len(levels) - 1 and s > levels[i]:
        i += 1
    x0, x1, y0, y1 = levels[i - 1], levels[i], logs[i - 1], logs[i]
    return math.exp(y0 + (y1 - y0) * (s - x0) / (x1 - x0)) if x1 > x0 else math.exp(y0)


def spread(curves: dict[str, tuple[list[float], list[float]]], weights: dict[str, float], sizes: dict[str, int],
           fraction: float, bounds: tuple[float, float]) -> dict[str, float]:
    """Sparsities minimising ``sum w E(s)`` with ``sum n s = fraction * sum n``: cheapest grid steps first."""
    lo, hi = bounds
    names = list(curves)
    if not names:
        return {}
    steps = max(1, round((hi - lo) / GRID))
    grid = [lo + (hi - lo) * k / steps for k in range(steps + 1)]
    cost = {n: [weights[n] * _interpolate(*curves[n], s) for s in grid] for n in names}
    level = {n: 0 for n in names}
    need = fraction * sum(sizes.values()) - lo * sum(sizes.values())
    heap = [((cost[n][1] - cost[n][0]) / (sizes[n] * (grid[1] - grid[0])), n) for n in names if steps > 0]
    heapq.heapify(heap)
    last = names[0]
    while need > 1e-9 and heap:
        _, name = heapq.heappop(heap)
        k = level[name] = level[name] + 1
        need -= sizes[name] * (grid[k] - grid[k - 1])
        last = name
        if k < steps:
            heapq.heappush(heap, ((cost[name][k + 1] - cost[name][k]) / (sizes[name] * (grid[k + 1] - grid[k])), name))
    chosen = {n: grid[level[n]] for n in names}
    chosen[last] += need / sizes[last]  # the last step overshoots: hand the surplus back, exactly
    return chosen


def owl_fractions(model: nn.Module, found: list[PrunableTensor], stats: dict[int, InputStats],
                  opts: MagnitudeOptions, fraction: float) -> dict[str, float]:
    """OWL: per block, ``s_b = s - (D'_b - mean D')`` with ``D'`` the outlier share scaled to ``[0, 2 lambda]``."""
    found_blocks = find_blocks(model)
    if found_blocks is None:
        raise ModelError("magnitude: allocation 'owl' spreads sparsity over repeated blocks (transformer layers); "
                         "this model has none: use allocation 'sensitivity' or 'uniform'")
    blocks = found_blocks[1]
    owner = {id(m): b for b, block in enumerate(blocks) for m in block.modules()}
    scores = score_targets(found, opts.model_copy(update={"criterion": "activation"}), stats, {})
    outliers = torch.zeros(len(blocks), dtype=torch.float64)
    sizes = torch.zeros(len(blocks), dtype=torch.float64)
    for target in found:
        b = owner.get(id(target.module))
        if b is None:
            continue
        score = scores[target.name]
        outliers[b] += float((score > OWL_M * score.mean()).sum())
        sizes[b] += score.numel()
    used = sizes > 0
    share = torch.where(used, outliers / sizes.clamp_min(1), torch.zeros_like(sizes))
    low, high = float(share[used].min()), float(share[used].max())
    scaled = (share - low) / (high - low) * 2 * OWL_LAMBDA if high > low else torch.zeros_like(share)
    mean = float((scaled * sizes).sum() / sizes.sum())
    lo, hi = opts.min_sparsity, opts.max_sparsity
    return {t.name: min(hi, max(lo, fraction - (float(scaled[owner[id(t.module)]]) - mean)))
            for t in found if id(t.module) in owner}
