"""Rank rules and the MAC-budget allocator (greedy on each layer's convex error-vs-savings hull)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .spectra import Spectrum

def round_rank(rank: int, multiple: int, full_rank: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, at most ``full_rank`` and at least 1."""
    if multiple > 1:
        rank = -(-rank // multiple) * multiple
    return max(1, min(int(rank), full_rank))


def rank_for_ratio(full_rank: int, ratio: float, multiple: int = 1) -> int:
    """The rank keeping ``ratio`` of ``full_rank`` (rounded to ``multiple``)."""
    return round_rank(max(1, round(ratio * full_rank)), multiple, full_rank)


def rank_for_energy(spectrum: Spectrum, energy: float, multiple: int = 1) -> int:
    """The smallest rank whose directions hold ``energy`` of the total (rounded to ``multiple``)."""
    kept = spectrum.kept()
    target = torch.tensor([energy - 1e-7], dtype=kept.dtype, device=kept.device)
    rank = int(torch.searchsorted(kept, target)) + 1
    return round_rank(rank, multiple, spectrum.full_rank)


@dataclass
class RankCurve:
    """What the MAC allocator knows about one layer: cost per rank, original MACs, spectrum.

    ``time`` is an optional measured latency model ``(original_ms, fixed_ms, ms_per_rank)``: the
    factors at rank ``r`` take ``fixed_ms + ms_per_rank * r``. With it the allocator ranks cuts by
    error per millisecond saved instead of per MAC saved (the MAC budget still decides when to stop),
    so a layer whose factors pay a large fixed cost is cut last.
    """

    macs: int                  # MACs of the original layer
    cost_per_rank: int         # MACs of the factor module per unit of rank
    energies: torch.Tensor     # (R,) descending, summed over groups
    weight: float = 1.0        # how much this layer's normalized error costs (its measured sensitivity)
    min_rank: int = 1          # no rank below this (deeper cuts were measured not to pay off)
    time: tuple[float, float, float] | None = None


def _hull_items(curve: RankCurve, multiple: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The convex hull steps of one layer's (gain, error) curve: ``(density, rank, MACs saved)`` each.

    The gain is MACs saved, or milliseconds saved when the curve has a latency model; a rank whose
    factors would not be faster than the original is no candidate then.
    """
    energies = curve.energies.double()
    full = energies.numel()
    step = max(1, multiple)
    ranks = torch.arange(step, full, step, dtype=torch.long)
    cost = ranks.double() * curve.cost_per_rank
    gain = curve.macs - cost
    if curve.time is not None:
        original, fixed, per_rank = curve.time
        # a rank that does not change the time (per_rank <= 0 from noise) saves a little, so deeper cuts
        # still come last: only when the MAC budget needs them
        per_rank = max(per_rank, 1e-6 * original / full)
        gain = original - (fixed + per_rank * ranks.double())
    useful = (cost < curve.macs) & (ranks >= curve.min_rank) & (gain > 0)
    ranks, cost, gain = ranks[useful], cost[useful], gain[useful]
    if ranks.numel() == 0:
        return None
    tail = energies.flip(0).cumsum(0).flip(0)              # tail[k] = energy of directions k..R-1
    error = curve.weight * tail[ranks] / tail[0].clamp_min(1e-30)  # weighted normalized energy lost
    first_density = error / gain
    # From the original layer (gain 0, error 0) the first hull point is the cheapest slope; below it
    # the curve is convex, so each further step down in rank has a larger slope than the one before.
    start = int(torch.nonzero(first_density == first_density.min()).max())
    ranks, cost, gain, error = (t[: start + 1].flip(0) for t in (ranks, cost, gain, error))
    savings = torch.cat([curve.macs - cost[:1], cost[:-1] - cost[1:]])
    gained = torch.cat([gain[:1], gain[1:] - gain[:-1]])
    lost = torch.cat([error[:1], error[1:] - error[:-1]])
    return lost / gained, ranks, savings


def allocate_ranks(curves: Sequence[RankCurve], savings_needed: float, multiple: int = 1) -> list[int | None]:
    """Per-layer ranks (None: keep the layer) that save ``savings_needed`` MACs at least error.

    Greedy on the convex hull of every layer's (MACs, normalized energy lost x weight) curve: the
    steps that lose the least energy per MAC saved (per millisecond saved, for curves with a latency
    model) go first, whichever layer they belong to, until the MAC savings are reached (or every
    useful step is taken). Ranks are multiples of ``multiple``.
    """
    chosen: list[int | None] = [None] * len(curves)
    if savings_needed <= 0:
        return chosen
    parts = [(i, _hull_items(c, multiple)) for i, c in enumerate(curves)]
    parts = [(i, p) for i, p in parts if p is not None]
    if not parts:
        return chosen
    density = torch.cat([p[0] for _, p in parts])
    ranks = torch.cat([p[1] for _, p in parts])
    savings = torch.cat([p[2] for _, p in parts])
    owner = torch.cat([torch.full((p[1].numel(),), i, dtype=torch.long) for i, p in parts])
    order = torch.sort(density, stable=True).indices
    reached = savings[order].cumsum(0) >= savings_needed
    count = int(torch.nonzero(reached)[0]) + 1 if bool(reached.any()) else order.numel()
    taken = order[:count]
    lowest = torch.full((len(curves),), torch.iinfo(torch.long).max, dtype=torch.long)
    lowest.scatter_reduce_(0, owner[taken], ranks[taken], reduce="amin")
    # The last step taken may overshoot (the first step of a layer is a jump); hand the surplus back
    # to that layer, the one losing the most per MAC, as extra rank.
    surplus = float(savings[taken].sum()) - savings_needed
    last = int(owner[taken[-1]])
    curve, step = curves[last], max(1, multiple)
    extra = int(surplus // (curve.cost_per_rank * step)) * step
    if extra > 0:
        limit = min(curve.energies.numel() - 1, -(-curve.macs // curve.cost_per_rank) - 1)  # still saves MACs
        raised = min(int(lowest[last]) + extra, limit // step * step if step > 1 else limit)
        lowest[last] = max(int(lowest[last]), raised)
    for i in torch.nonzero(lowest < torch.iinfo(torch.long).max).flatten().tolist():
        chosen[i] = int(lowest[i])
    return chosen
