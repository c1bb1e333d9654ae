"""Choosing ranks: fixed rules (``rank``, ``rank_ratio``, ``energy``) or a MAC budget spread over layers."""

from __future__ import annotations


from .layer import Layer, even_share, rank_at_share
from .options import SVDOptions
from .ranks import RankCurve, allocate_ranks, rank_for_energy, rank_for_ratio, round_rank
from .timing import LATENCY_ROUNDS, Trials, check_latency, raised_floor, time_models


def budget_ranks(layers: list[Layer], needed: float, opts: "SVDOptions",
                  trial: "Trials", skipped: list[tuple[str, str]], weights: dict[str, float]) -> None:
    """Spread ``needed`` MAC savings; where factors were not fast enough, cut that layer less and re-spread.

    A layer whose factors miss ``min_speedup``/``min_realized`` at rank ``r`` gets a rank floor halfway
    from ``r`` to its break-even rank, so the next allocation cuts it more gently and moves the rest of
    the budget elsewhere; a layer with no useful rank left keeps its original.
    """
    for attempt in range(LATENCY_ROUNDS):
        active = [layer for layer in layers if layer.name not in trial.slow]
        allocate(active, needed, opts, weights, trial)
        failed = check_latency(active, opts, trial)
        if not failed:
            break
        for layer in active:
            if layer.name not in failed:
                continue
            floor = raised_floor(layer, opts.rank_multiple)
            if floor is None or attempt == LATENCY_ROUNDS - 1:
                trial.slow[layer.name] = failed[layer.name]
            else:
                trial.floors[(layer.name, layer.form)] = floor
    for layer in layers:
        if layer.name not in trial.slow and layer.rank is None:
            skipped.append((layer.name, "mac_ratio: the budget was met by cheaper cuts elsewhere"))


def fixed_ranks(layers: list[Layer], opts: "SVDOptions", trial: "Trials",
                 skipped: list[tuple[str, str]]) -> None:
    """Ranks by ``rank``/``rank_ratio``/``energy``; layers whose factors save no MACs are skipped."""
    for layer in layers:
        fixed_rank(layer, opts)
        factor = layer.factor_macs(layer.form, layer.rank)
        if factor >= layer.macs:
            skipped.append((layer.name, f"rank {layer.rank} ({layer.form}) needs {factor:,} MACs >= the "
                                        f"original {layer.macs:,}: no reduction"))
            layer.rank = None
    trial.slow.update(check_latency(layers, opts, trial))


def fixed_rank(layer: Layer, opts: "SVDOptions") -> None:
    """Rank by ``rank``/``rank_ratio``/``energy``; with several forms the one with fewer MACs."""
    best = None
    for form in layer.forms:
        spectrum = layer.spectra[form]
        full = spectrum.full_rank
        if opts.rank_rule == "rank":
            rank = round_rank(opts.rank, opts.rank_multiple, full)
        elif opts.rank_rule == "energy":
            rank = rank_for_energy(spectrum, opts.energy, opts.rank_multiple)
        else:
            rank = rank_for_ratio(full, opts.rank_ratio, opts.rank_multiple)
        macs = layer.factor_macs(form, rank)
        if best is None or macs < best[0]:
            best = (macs, form, rank)
    _, layer.form, layer.rank = best


def allocate(layers: list[Layer], needed: float, opts: "SVDOptions",
              weights: dict[str, float], trial: "Trials") -> None:
    """Spread ``needed`` MAC savings over ``layers`` (choosing each layer's form first when auto)."""
    share = even_share(layers, needed)
    for layer in layers:
        layer.form = min(layer.forms, key=lambda form: error_at_share(layer, form, share))
    if opts.spread_by == "latency":
        time_models(layers, opts, trial)
    curves = []
    for layer in layers:
        energies = layer.spectra[layer.form].energies.sum(0)
        curves.append(RankCurve(layer.macs, layer.cost_per_rank(layer.form), energies,
                                weights.get(layer.name, 1.0), trial.floors.get((layer.name, layer.form), 1),
                                trial.time_models.get((layer.name, layer.form))))
    for layer, rank in zip(layers, allocate_ranks(curves, needed, opts.rank_multiple)):
        layer.rank = rank


def error_at_share(layer: Layer, form: str, share: float) -> float:
    return layer.spectra[form].error_at(rank_at_share(layer, form, share))
