"""The allocation: per-layer strengths that reach a saving at the least predicted loss (an exact knapsack)."""

from __future__ import annotations

import math

from .knobs import Knob


#: Savings steps of the allocation knapsack: the target is met within 1/ALLOCATION_BINS of the saving.
ALLOCATION_BINS = 400

#: Weight of a trial's relative output distortion next to its metric loss in the allocation: small, so
#: it only orders choices the (coarse, often zero) calibration metric cannot tell apart.
DISTORTION_WEIGHT = 1e-3


def allocate(knobs: list[Knob], needed: float, resolution: int = ALLOCATION_BINS) -> dict[str, float]:
    """The per-layer strengths saving at least ``needed`` at the least summed predicted loss.

    An exact multiple-choice knapsack (each layer: untouched or one grid strength) solved by
    dynamic programming over savings counted in ``needed / resolution`` steps, rounded down, so the
    chosen savings really add up to ``needed``. Each point's loss is its metric loss, ties broken by
    its output distortion (``DISTORTION_WEIGHT``) and then by less overshoot. Losses and savings
    are taken as additive across layers; the realized cost is measured afterwards and corrected.
    When the target is out of reach every layer gets the strength that saves the most.

    Returns ``{knob.key: strength}`` for the knobs that are used.
    """
    if needed <= 0 or not knobs:
        return {}
    unit = needed / resolution
    options = []
    for knob in knobs:
        choices = []
        for strength in knob.grid:
            point = knob.points[strength]
            if point["saving"] > 0:
                cost = point["loss"] + DISTORTION_WEIGHT * point.get("distortion", 0.0)
                choices.append((strength, min(resolution, int(point["saving"] / unit)), cost, point["saving"]))
        options.append(choices)
    best = [0.0] + [math.inf] * resolution        # least cost reaching exactly b steps (b = resolution: at least)
    trail: list[list[tuple[int, int]]] = []      # per knob and state: (choice index or -1, previous state)
    for choices in options:
        new, back = list(best), [(-1, b) for b in range(resolution + 1)]
        for index, (_, units, cost, saving) in enumerate(choices):
            tie = 1e-12 * saving
            for b, value in enumerate(best):
                if value == math.inf:
                    continue
                reach = min(resolution, b + units)
                candidate = value + cost + tie
                if candidate < new[reach]:
                    new[reach], back[reach] = candidate, (index, b)
        best = new
        trail.append(back)
    if best[resolution] == math.inf:
        return {k.key: max(k.grid, key=lambda s: k.points[s]["saving"]) for k in knobs
                if any(k.points[s]["saving"] > 0 for s in k.grid)}
    chosen: dict[str, float] = {}
    state = resolution
    for knob, choices, back in zip(reversed(knobs), reversed(options), reversed(trail)):
        index, state = back[state]
        if index >= 0:
            chosen[knob.key] = choices[index][0]
    return chosen
