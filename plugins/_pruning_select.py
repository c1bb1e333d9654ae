"""Turn importance scores into keep-masks: exact counts, per group, per layer, global, N:M, by rows.

All functions work on whole tensors (``kthvalue``/``topk`` plus a cumulative sum to break ties), so the
cost is a few linear passes over the scores however many layers there are. ``True`` means *keep*.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest value (1-based) of a 1-D tensor.

    For large tensors a random sample brackets the answer first, so only the few values inside the
    bracket go through ``kthvalue``; the result is the same as ``flat.kthvalue(k)``, only faster.
    """
    n = flat.numel()
    if n <= 1 << 20:
        return flat.kthvalue(k).values
    gen = torch.Generator(device=flat.device).manual_seed(n + k)
    size = 1 << 16
    sample = flat[torch.randint(n, (size,), generator=gen, device=flat.device)].sort().values
    q = k / n
    margin = 6 * math.sqrt(max(q * (1 - q), 1.0 / n) / size) + 2.0 / size
    lo_idx, hi_idx = math.floor((q - margin) * size), math.ceil((q + margin) * size)
    low = sample[lo_idx] if lo_idx >= 0 else None
    high = sample[hi_idx] if hi_idx < size else None
    inside = torch.ones_like(flat, dtype=torch.bool)
    below = 0
    if low is not None:
        under = flat < low
        below = int(torch.count_nonzero(under))
        inside &= ~under
    if high is not None:
        inside &= flat <= high
    candidates = flat[inside]
    if below < k <= below + candidates.numel():
        return candidates.kthvalue(k - below).values
    return flat.kthvalue(k).values  # the sample missed (vanishingly rare): exact fallback


def prune_lowest(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Keep-mask of a ``[G, n]`` score matrix pruning exactly ``k`` lowest entries of every row.

    ``k`` is an int or a ``[G]`` tensor of per-row counts. Ties at the cut are broken by position,
    so the count is exact even when many scores are equal (e.g. weights already zero).
    """
    groups, n = scores.shape
    k = torch.as_tensor(k, dtype=torch.long).expand(groups).clamp(0, n)
    if n == 0 or int(k.max()) == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if groups == 1:
        flat = scores[0]
        kk = int(k[0])
        cut = kth_smallest(flat, kk)
        prune = flat < cut
        need = kk - int(torch.count_nonzero(prune))
        if need > 0:
            prune[(flat == cut).nonzero().squeeze(1)[:need]] = True
        return (~prune).unsqueeze(0)
    if bool((k == k[0]).all()):
        cut = scores.kthvalue(int(k[0]), dim=1, keepdim=True).values
    else:  # rows need different counts: sort once, read the cut of each row
        ordered = scores.sort(dim=1).values
        cut = ordered.gather(1, (k - 1).clamp_min(0).unsqueeze(1))
    below = scores < cut
    tied = scores == cut
    need = (k - below.sum(1)).unsqueeze(1)
    prune = below | (tied & (tied.cumsum(1) <= need))
    prune &= (k > 0).unsqueeze(1)
    return ~prune


def _count_bounds(sizes: Sequence[int], lo: float, hi: float,
                  keep_one: bool = False) -> tuple[list[int], list[int]]:
    """Per-tensor ``(lowest, highest)`` prune counts; ``keep_one`` leaves at least one entry."""
    high = [math.floor(hi * n + 1e-9) for n in sizes]
    if keep_one:
        high = [min(h, max(n - 1, 0)) for h, n in zip(high, sizes)]
    low = [min(math.ceil(lo * n - 1e-9), h) for n, h in zip(sizes, high)]
    return low, high


def global_lowest(scores: Sequence[torch.Tensor], fraction: float, lo: float = 0.0,
                  hi: float = 1.0, keep_one: bool = False) -> tuple[list[torch.Tensor], bool]:
    """Keep-masks (flat) pruning ``round(fraction * total)`` lowest scores across all tensors.

    Every tensor keeps its pruned fraction within ``[lo, hi]``: tensors that would fall outside are held
    at the bound and the rest share the remaining count (water-filling; each pass fixes at least one
    tensor, and only on the side the true solution lies). Returns the masks and whether the exact total
    was reachable within the bounds.
    """
    flats = [s.reshape(-1) for s in scores]
    sizes = [f.numel() for f in flats]
    total = sum(sizes)
    want = round(fraction * total)
    low, high = _count_bounds(sizes, lo, hi, keep_one)
    fixed: dict[int, int] = {}
    free = list(range(len(flats)))
    free_masks: list[torch.Tensor] = []
    while free:
        budget = want - sum(fixed.values())
        capacity = sum(sizes[i] for i in free)
        cat = torch.cat([flats[i] for i in free]) if len(free) > 1 else flats[free[0]]
        keep = prune_lowest(cat.unsqueeze(0), max(0, min(budget, capacity)))[0]
        free_masks = list(torch.split(keep, [sizes[i] for i in free]))
        counts = [sizes[i] - int(torch.count_nonzero(m)) for i, m in zip(free, free_masks)]
        over = [(i, c - high[i]) for i, c in zip(free, counts) if c > high[i]]
        under = [(i, low[i] - c) for i, c in zip(free, counts) if c < low[i]]
        if not over and not under:
            break
        excess, deficit = sum(e for _, e in over), sum(d for _, d in under)
        if excess >= deficit:
            fixed.update({i: high[i] for i, _ in over})
        else:
            fixed.update({i: low[i] for i, _ in under})
        free = [i for i in free if i not in fixed]
        free_masks = []
    masks: list[torch.Tensor | None] = [None] * len(flats)
    for i, m in zip(free, free_masks):
        masks[i] = m
    for i, count in fixed.items():
        masks[i] = prune_lowest(flats[i].unsqueeze(0), count)[0]
    pruned = sum(sizes[i] - int(torch.count_nonzero(m)) for i, m in enumerate(masks))
    return [m for m in masks], pruned == want


def layer_lowest(scores: torch.Tensor, fraction: float, lo: float = 0.0, hi: float = 1.0,
                            keep_one: bool = False) -> torch.Tensor:
    """Keep-mask pruning ``fraction`` (clamped to ``[lo, hi]``) of one tensor's lowest scores.

    ``keep_one`` leaves at least one entry (for a fraction below 1 that rounds up to everything).
    """
    flat = scores.reshape(1, -1)
    n = flat.shape[1]
    low, high = _count_bounds([n], lo, hi, keep_one)
    k = min(max(round(fraction * n), low[0]), high[0])
    return prune_lowest(flat, k).reshape(scores.shape)


def row_lowest(scores: torch.Tensor, fraction: float, lo: float = 0.0, hi: float = 1.0,
                          keep_one: bool = False) -> torch.Tensor:
    """Keep-mask pruning ``fraction`` of every output row (dim 0) separately, as Wanda compares."""
    rows = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    n = rows.shape[1]
    low, high = _count_bounds([n], lo, hi, keep_one)
    k = min(max(round(fraction * n), low[0]), high[0])
    return prune_lowest(rows, k).reshape(scores.shape)


def threshold_mask(scores: torch.Tensor, threshold: float, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Keep-mask dropping scores below ``threshold``, moved to the nearest count within ``[lo, hi]``."""
    keep = scores >= threshold
    n = scores.numel()
    low, high = _count_bounds([n], lo, hi)
    pruned = n - int(torch.count_nonzero(keep))
    if low[0] <= pruned <= high[0]:
        return keep
    k = min(max(pruned, low[0]), high[0])
    return prune_lowest(scores.reshape(1, -1), k).reshape(scores.shape)


def n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the ``n`` highest of every ``m`` consecutive scores along the input dimension.

    The input dimension is dim 1 (``[out, in, *kernel]``); groups run over input channels at each kernel
    position, as sparse tensor-core kernels expect. ``scores.shape[1]`` must be a multiple of ``m``.
    """
    moved = scores.movedim(1, -1)  # [out, *kernel, in]
    groups = moved.reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(moved.shape).movedim(-1, 1)


def row_scores(scores: torch.Tensor, norm: str, normalise: bool) -> torch.Tensor:
    """One score per output row (dim 0): the L1 or L2 norm of its scores, optionally per element."""
    rows = scores.reshape(scores.shape[0], -1)
    if norm == "l1":
        value = rows.abs().sum(1)
        return value / rows.shape[1] if normalise else value
    value = rows.pow(2).sum(1).sqrt()
    return value / math.sqrt(rows.shape[1]) if normalise else value
