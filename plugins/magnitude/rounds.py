"""One pruning round: score every tensor, choose keep-masks, optionally reconstruct, apply with undo."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim.context import RunContext
from torchslim.errors import ModelError
from torchslim.masks import Mask, apply_mask, get_mask

from .calibration import InputStats, collect_input_stats, gram_supported, merge_stats
from .keep import choose_masks
from .options import MagnitudeOptions
from .reconstruct import sparsegpt_update
from .scores import score_targets
from .tensors import PrunableTensor


def prune_round(
    model: nn.Module,
    found: list[PrunableTensor],
    opts: MagnitudeOptions,
    fraction: float | None,
    context: RunContext,
    calibration: Iterable[Any] | None,
) -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]], bool]:
    """Prune every target once: score, choose masks, optionally reconstruct, apply.

    Without ``sequential`` reconstruction all masks and weights are computed before anything changes.
    With it, layers go in forward order in groups fed the same input, each calibrated on the outputs
    of the groups already pruned; a failure then restores the tensors already changed. Scores are
    computed layer by layer and dropped (:class:`Scores`), and a mask is released once its module
    holds it, so the step's own memory stays near the masks' (one byte per weight). Stored values
    are zeroed only once every mask is in place: until then a failure only has to take masks off.
    """
    stats: dict[int, InputStats] = {}
    batches: list[Any] = []
    groups = [found]
    if opts.needs_calibration:
        source = calibration if calibration is not None else context.calibration_batches(opts.calibration_batches)
        batches = list(source)
        stats, trace = collect_input_stats(model, _modules(found), batches, gram=opts.reconstruct)
        if opts.reconstruct and opts.sequential:
            groups = _forward_groups(found, trace)
    notes: dict[str, dict[str, Any]] = {}
    preset: dict[str, torch.Tensor] | None = None
    skipped: list[tuple[str, str]] = []
    exact = True
    if len(groups) > 1 and (opts.scope == "global" and opts.threshold is None and opts.n_of_m is None):
        # one ranking over all layers needs every score now: masks from this pass, weights sequential
        preset, skipped, exact = choose_masks(found, score_targets(found, opts, stats, notes), opts, fraction)
    undo = Undo()
    masked: list[PrunableTensor] = []
    try:
        for index, group in enumerate(groups):
            if index > 0:
                expected = {id(m): trace.calls.get(id(m), 1) for m in _modules(group)}
                fresh, _ = collect_input_stats(model, _modules(group), batches, gram=True, stop_after=expected)
                stats.update(fresh)
            scores = score_targets(group, opts, stats, notes)
            if preset is not None:
                keep = {t.name: preset[t.name] for t in group if t.name in preset}
            else:
                keep, group_skipped, group_exact = choose_masks(group, scores, opts, fraction)
                skipped += group_skipped
                exact = exact and group_exact
            for target in group:  # earlier masks stay: the new mask only adds zeros
                existing = get_mask(target.module, target.param_name)
                if existing is not None and target.name in keep:
                    keep[target.name] = keep[target.name] & existing.to(keep[target.name].device)
            check_not_empty(group, keep, opts)
            weights: dict[str, torch.Tensor] = {}
            if opts.reconstruct:
                for target in group:
                    new = reconstructed_weight(target, keep.get(target.name), stats, opts)
                    if new is not None:
                        weights[target.name] = new
                        notes[target.name]["reconstructed"] = True
            for target in group:
                if target.name in keep and apply_keep(target, keep.pop(target.name), weights.pop(target.name, None), undo):
                    masked.append(target)
    except BaseException:
        undo.restore()
        raise
    for target in masked:  # the masks hold: make the stored values sparse too
        with torch.no_grad():
            target.stored.mul_(get_mask(target.module, target.param_name))
    return skipped, notes, exact


def _modules(found: list[PrunableTensor]) -> list[nn.Module]:
    return [m for t in found if not t.is_bias for _, m, _ in t.holders]


def _forward_groups(found: list[PrunableTensor], trace: Any) -> list[list[PrunableTensor]]:
    """Targets in forward order, grouped by shared input; never-called ones (and biases) last."""
    position = {key: i for i, key in enumerate(trace.order)}
    keyed, rest = [], []
    for target in found:
        calls = [id(m) for _, m, _ in target.holders if id(m) in position]
        if target.is_bias or not calls:
            rest.append(target)
        else:
            first = min(calls, key=position.__getitem__)
            keyed.append((position[first], trace.group[first], target))
    keyed.sort(key=lambda item: item[0])
    groups: list[list[PrunableTensor]] = []
    last = None
    for _, group_id, target in keyed:
        if groups and group_id == last:
            groups[-1].append(target)
        else:
            groups.append([target])
        last = group_id
    if rest:
        groups.append(rest)
    return groups


class Undo:
    """Remembers each tensor's mask (and values, when rewritten) before it changes, to restore on failure."""

    def __init__(self) -> None:
        self.saved: list[tuple[PrunableTensor, torch.Tensor | None, torch.Tensor | None]] = []

    def record(self, target: PrunableTensor, values: bool) -> None:
        mask = get_mask(target.module, target.param_name)
        self.saved.append((target, target.stored.detach().clone() if values else None,
                           None if mask is None else mask.clone()))

    def restore(self) -> None:
        for target, values, mask in reversed(self.saved):
            with torch.no_grad():
                if mask is None:
                    for _, module, param_name in target.holders:
                        if get_mask(module, param_name) is not None:
                            parametrize.remove_parametrizations(module, param_name, leave_parametrized=False)
                else:
                    get_mask(target.module, target.param_name).copy_(mask)
                if values is not None:
                    target.stored.copy_(values)


def apply_keep(target: PrunableTensor, keep: torch.Tensor, weight: torch.Tensor | None, undo: Undo) -> bool:
    """Write reconstructed values (if any) and mask every holder of ``target`` with one shared mask.

    The stored values are left as they are (the caller zeroes them once every mask is in place), so
    undoing a mask needs no copy of them. Returns False when nothing was pruned or masked.
    """
    if bool(keep.all()) and get_mask(target.module, target.param_name) is None:
        return False  # nothing pruned here: leave the tensor unparametrized
    undo.record(target, values=weight is not None)
    if weight is not None:
        with torch.no_grad():
            target.stored.copy_(weight)
    shared = Mask(keep, copy=False)  # the mask was made for this tensor alone: no second copy
    for _, module, param_name in target.holders:
        shared = apply_mask(module, param_name, shared, zero_stored=False)
    return True


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


def reconstructed_weight(target: PrunableTensor, keep: torch.Tensor | None, stats: dict[int, InputStats],
                 opts: MagnitudeOptions) -> torch.Tensor | None:
    """Least-squares updated weights for ``target`` under ``keep``, or None when not applicable."""
    if keep is None or target.is_bias or target.param_name != "weight" or not target.writable():
        return None
    if not all(gram_supported(m) for _, m, _ in target.holders):
        return None
    merged = merge_stats([stats.get(id(m)) for _, m, _ in target.holders])
    if merged is None or merged.gram is None:
        return None
    weight = target.effective()
    rows = weight.reshape(weight.shape[0], -1)
    if merged.gram.shape[0] != rows.shape[1]:
        return None
    updated = sparsegpt_update(rows, keep.reshape(rows.shape), merged.gram.to(rows.device), damp=opts.damp)
    return updated.reshape(weight.shape)
