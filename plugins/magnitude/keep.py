"""Keep-masks for every tensor of a round: pattern (unstructured, N:M, structured) x scope x amount."""

from __future__ import annotations

import torch

from . import select
from .options import MagnitudeOptions
from .scores import Scores
from .tensors import PrunableTensor

Masks = tuple[dict[str, torch.Tensor], list[tuple[str, str]], bool]


def choose_masks(found: list[PrunableTensor], scores: Scores, opts: MagnitudeOptions, fraction: float | None,
                 fractions: dict[str, float] | None = None) -> Masks:
    """Keep-masks for every target (pattern x scope x sparsity/threshold), the tensors skipped with reasons,
    and whether the bounds were met exactly; each score is read once per layer (a few times with global
    ranking) and dropped. ``fractions`` gives some tensors their own sparsity (an allocation).
    Masks are in ``[out, in, ...]`` layout (:meth:`PrunableTensor.matrix`)."""
    if opts.n_of_m is not None:
        return _n_of_m_masks(found, scores, opts)
    if opts.pattern == "structured":
        return _structured_masks(found, scores, opts, fraction)
    return _unstructured_masks(found, scores, opts, fraction, fractions or {})


def _n_of_m_masks(found: list[PrunableTensor], scores: Scores, opts: MagnitudeOptions) -> Masks:
    n, m = opts.n_of_m
    keep: dict[str, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for target in found:
        score = scores[target.name]
        if target.is_bias:
            skipped.append((target.name, f"biases have no input dimension; {opts.pattern} leaves them dense"))
        elif score.shape[1] < m:
            skipped.append((target.name, f"input dimension {score.shape[1]} is smaller than M={m} of "
                                         f"{opts.pattern}; left dense"))
        elif score.shape[1] % m:
            skipped.append((target.name, f"input dimension {score.shape[1]} is not a multiple of M={m} of "
                                         f"{opts.pattern}; left dense"))
        else:
            keep[target.name] = select.n_of_m(score, n, m)
    return keep, skipped, True


def _structured_masks(found: list[PrunableTensor], scores: Scores, opts: MagnitudeOptions,
                      fraction: float | None) -> Masks:
    """Whole output rows by their norm; a bias follows its weight's rows."""
    lo, hi, one = opts.min_sparsity, opts.max_sparsity, not opts.allow_empty_layers
    weights = [t for t in found if not t.is_bias]
    rows, shapes = {}, {}
    for t in weights:
        score = scores[t.name]
        rows[t.name] = select.row_scores(score, opts.norm, normalise=opts.scope == "global")
        shapes[t.name] = score.shape
        del score
    row_keep: dict[str, torch.Tensor] = {}
    exact = True
    if opts.threshold is not None:
        row_keep = {t.name: select.threshold_mask(rows[t.name], opts.threshold, lo, hi) for t in weights}
    elif opts.scope == "global":
        masks, exact = select.global_lowest([rows[t.name] for t in weights], fraction, lo, hi, keep_one=one)
        row_keep = {t.name: mk for t, mk in zip(weights, masks)}
    else:
        row_keep = {t.name: select.layer_lowest(rows[t.name], fraction, lo, hi, keep_one=one) for t in weights}
    keep: dict[str, torch.Tensor] = {}
    for t in weights:
        shape = shapes[t.name]
        keep[t.name] = row_keep[t.name].reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    skipped: list[tuple[str, str]] = []
    by_module = {id(t.module): t for t in weights}
    for t in found:
        if not t.is_bias:
            continue
        owner = by_module.get(id(t.module))
        if owner is None or row_keep[owner.name].numel() != scores[t.name].numel():
            skipped.append((t.name, "no pruned weight rows to follow; left dense"))
        else:
            keep[t.name] = row_keep[owner.name].clone()
    return keep, skipped, exact


def _unstructured_masks(found: list[PrunableTensor], scores: Scores, opts: MagnitudeOptions,
                        fraction: float | None, fractions: dict[str, float]) -> Masks:
    lo, hi, one = opts.min_sparsity, opts.max_sparsity, not opts.allow_empty_layers
    keep: dict[str, torch.Tensor] = {}
    exact = True
    if opts.threshold is not None:
        for t in found:
            keep[t.name] = select.threshold_mask(scores[t.name], opts.threshold, lo, hi)
    elif opts.scope == "global":
        masks, exact = select.global_lowest([scores.reader(t.name) for t in found], fraction, lo, hi, keep_one=one)
        for t, mk in zip(found, masks):
            keep[t.name] = mk.reshape(t.matrix().shape)
    elif opts.scope == "row":
        for t in found:
            keep[t.name] = select.row_lowest(scores[t.name], fractions.get(t.name, fraction), lo, hi, keep_one=one)
    else:
        for t in found:
            keep[t.name] = select.layer_lowest(scores[t.name], fractions.get(t.name, fraction), lo, hi, keep_one=one)
    return keep, [], exact
