"""What one group of tensors becomes: keep-masks and, with reconstruction, the compensated weights.

Nothing here changes the model: :func:`decide` returns the masks and weights (in ``[out, in, ...]``
layout) for :mod:`.apply` to write. The criterion's masks come first (:func:`.keep.choose_masks`,
with every scope, bound and allocation rule); with ``selection: sweep`` they only fix how many
entries each tensor (or each row, with scope 'row') loses, and SparseGPT's sweep chooses which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from torchslim.errors import ModelError
from torchslim.masks import get_mask

from .admm import admm_prune
from .calibration import InputStats, gram_supported, merge_stats
from .keep import choose_masks
from .options import MagnitudeOptions
from .reconstruct import exact_update, sparsegpt
from .scores import score_targets
from .tensors import PrunableTensor


@dataclass
class Decision:
    """Keep-masks and new weights by tensor name (``[out, in, ...]`` layout), what was skipped, exactness."""

    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    exact: bool = True


def decide(group: list[PrunableTensor], stats: dict[int, InputStats], opts: MagnitudeOptions,
           fraction: float | None, notes: dict[str, dict[str, Any]],
           preset: dict[str, torch.Tensor] | None = None, fractions: dict[str, float] | None = None) -> Decision:
    """Masks (and reconstructed weights) for ``group``; ``preset`` masks come from an earlier global ranking."""
    scores = score_targets(group, opts, stats, notes)
    out = Decision()
    if preset is not None:
        out.keep = {t.name: preset[t.name] for t in group if t.name in preset}
    else:
        out.keep, out.skipped, out.exact = choose_masks(group, scores, opts, fraction, fractions)
    for target in group:  # earlier masks stay: the new mask only adds zeros
        existing = get_mask(target.module, target.param_name)
        if existing is not None and target.name in out.keep:
            out.keep[target.name] = out.keep[target.name] & target.canonical(existing).to(out.keep[target.name].device)
    check_not_empty(group, out.keep, opts)
    if opts.reconstruct:
        for target in group:
            result = reconstruct(target, out.keep.get(target.name), stats, opts)
            if result is not None:
                out.weights[target.name], out.keep[target.name] = result
                notes[target.name]["reconstructed"] = True
                notes[target.name]["selection"] = selection_used(target, opts)
    return out


def check_not_empty(found: list[PrunableTensor], keep: dict[str, torch.Tensor], opts: MagnitudeOptions) -> None:
    if opts.allow_empty_layers:
        return
    empty = [t.name for t in found if t.name in keep and not bool(keep[t.name].any())]
    if empty:
        what = f"threshold {opts.threshold}" if opts.threshold is not None else "this setting"
        raise ModelError(
            f"magnitude: {what} would zero every weight of {', '.join(empty)}; lower the threshold, set "
            f"max_sparsity below 1, exclude the layer in 'targets', or set allow_empty_layers: true"
        )


def layer_gram(target: PrunableTensor, stats: dict[int, InputStats]) -> torch.Tensor | None:
    """The input Gram matrix of ``target``'s weight columns (summed over tied holders), or None."""
    if target.is_bias or target.param_name != "weight" or not target.writable():
        return None
    if not all(gram_supported(m) for _, m, _ in target.holders):
        return None
    merged = merge_stats([stats.get(id(m)) for _, m, _ in target.holders])
    if merged is None or merged.gram is None:
        return None
    columns = target.matrix()[0].numel()
    return merged.gram if merged.gram.shape[0] == columns else None


def layer_rhs(target: PrunableTensor, stats: dict[int, InputStats], rows: torch.Tensor) -> torch.Tensor | None:
    """``T X'^T`` for ``target``'s weight rows when its statistics carry a paired target (``match``), else
    None (the layer's own outputs: ``W H``). Tied tensors with several holders keep their own outputs."""
    entries = [stats.get(id(m)) for _, m, _ in target.holders]
    if len(entries) != 1 or entries[0] is None or entries[0].paired is None:
        return None
    return entries[0].paired.rhs(rows.double()).to(rows.device)


def selection_used(target: PrunableTensor, opts: MagnitudeOptions) -> str:
    """How ``target``'s mask is chosen: ``opts.selection``, or 'score' where that cannot run (thresholds,
    structured patterns, N:M on conv weights, whose groups run over channels rather than the Gram's column
    order); 'admm' falls back to 'sweep' on conv weights."""
    selection = opts.selection
    conv = target.matrix().dim() > 2
    if not opts.sweeps or selection == "score" or (opts.n_of_m is not None and conv):
        return "score"
    return "sweep" if conv else selection


def reconstruct(target: PrunableTensor, keep: torch.Tensor | None, stats: dict[int, InputStats],
                opts: MagnitudeOptions, damp: float | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(weights, keep)`` for ``target`` (``[out, in, ...]`` layout) by the step's selection and update, or
    None when it has no usable Gram matrix. ``keep`` fixes the mask (``selection: score``) or only how many
    entries go (``sweep``, ``admm``)."""
    gram = None if keep is None else layer_gram(target, stats)
    if gram is None:
        return None
    weight = target.matrix()
    rows = weight.reshape(weight.shape[0], -1)
    flat_keep = keep.reshape(rows.shape).to(rows.device)
    existing = get_mask(target.module, target.param_name)
    forced = None if existing is None else ~target.canonical(existing).reshape(rows.shape).to(rows.device)
    damp = opts.damp if damp is None else damp
    gram = gram.to(rows.device)
    rhs = layer_rhs(target, stats, rows)
    nm = opts.n_of_m
    selection = selection_used(target, opts)
    if selection == "score":
        new, new_keep = sparsegpt(rows, gram, damp=damp, keep=flat_keep)
    else:
        count: int | torch.Tensor | None = None
        if nm is None:
            count = (~flat_keep).sum(1) if opts.scope == "row" else int((~flat_keep).sum())
        prune = admm_prune if selection == "admm" else sparsegpt
        extra = {"steps": opts.admm_steps, "rhs": rhs} if selection == "admm" else {}
        new, new_keep = prune(rows, gram, damp=damp, count=count, n_of_m=nm, forced=forced, **extra)
    if opts.update == "exact" and selection != "admm":  # admm ends with the exact solve
        new = exact_update(new, rows, new_keep, gram, damp=damp, rhs=rhs)
    return new.reshape(weight.shape), new_keep.reshape(weight.shape)
