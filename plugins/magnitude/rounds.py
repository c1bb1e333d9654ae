"""One pruning round: calibrate, allocate, then decide and apply group by group, with undo on failure."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from torchslim.calibration import BlockStream, PairedBlocks, calibration_share
from torchslim.calibration.random_tokens import random_token_batches
from torchslim.context import RunContext
from torchslim.masks import get_mask

from .allocation import allocate
from .apply import Undo, apply_keep
from .calibration import InputStats, Trace
from .keep import choose_masks
from .options import MagnitudeOptions
from .plan import decide
from .scores import score_targets
from .sequential import Groups, all_at_once, by_blocks, by_groups, by_paired_blocks, gather
from .tensors import PrunableTensor

Round = tuple[list[tuple[str, str]], dict[str, dict[str, Any]], bool, dict[str, Any]]


def prune_round(model: nn.Module, found: list[PrunableTensor], opts: MagnitudeOptions, fraction: float | None,
                context: RunContext, calibration: Iterable[Any] | None) -> Round:
    """Prune every target once; return what was skipped, per-tensor notes, exactness and round info.

    Without ``sequential`` reconstruction all masks and weights are computed before anything changes.
    With it, tensors go in forward order (block by block, or layer group by group), each calibrated on
    the outputs of those already pruned; a failure then restores the tensors already changed. Scores
    are computed layer by layer and dropped, and a mask is released once its module holds it, so the
    step's own memory stays near the masks' (one byte per weight) plus the calibration statistics.
    Stored values are zeroed only once every mask is in place: until then a failure only has to take
    masks off.
    """
    batches, sharded = _calibration(model, opts, context, calibration)
    blocks_wanted = opts.reconstruct and opts.sequential and bool(batches)
    paired = PairedBlocks.open(model, batches) if blocks_wanted and opts.paired else None
    stream = paired.compressed if paired is not None else (BlockStream.open(model, batches) if blocks_wanted else None)
    dense, trace = _dense_stats(model, found, opts, batches, sharded, stream)
    fractions, info = allocate(model, found, dense, opts, fraction, batches) if fraction is not None else ({}, {})
    notes: dict[str, dict[str, Any]] = {}
    preset, skipped, exact = None, [], True
    sequential = stream is not None or (opts.reconstruct and opts.sequential and trace is not None)
    if sequential and opts.scope == "global" and opts.threshold is None and opts.n_of_m is None:
        # one ranking over all layers needs every score now: masks (or counts) from this pass
        preset, skipped, exact = choose_masks(found, score_targets(found, opts, dense, notes), opts, fraction)
    groups = _groups(model, found, opts, batches, sharded, stream, dense, trace, paired)
    masked = _apply_groups(groups, opts, fraction, notes, preset, fractions, skipped)
    exact = exact and masked.exact
    for target in masked.targets:  # the masks hold: make the stored values sparse too
        with torch.no_grad():
            target.stored.mul_(get_mask(target.module, target.param_name))
    info.update({"calibration_batches": len(batches), "sequential": "blocks" if stream is not None else
                 ("layer groups" if sequential else "off")})
    if stream is not None:
        info["calibration_tokens"] = stream.tokens()
        info["match"] = opts.match if paired is not None else "layer"
    return skipped, notes, exact, info


class _Applied:
    def __init__(self) -> None:
        self.targets: list[PrunableTensor] = []
        self.exact = True


def _apply_groups(groups: Groups, opts: MagnitudeOptions, fraction: float | None, notes: dict[str, dict[str, Any]],
                  preset: dict[str, torch.Tensor] | None, fractions: dict[str, float],
                  skipped: list[tuple[str, str]]) -> _Applied:
    """Decide and apply each group as the iterator hands it over; undo everything on failure."""
    undo, done = Undo(), _Applied()
    try:
        for group, stats in groups:
            decision = decide(group, stats, opts, fraction, notes, preset, fractions)
            skipped += decision.skipped
            done.exact = done.exact and decision.exact
            for target in group:
                if target.name in decision.keep and apply_keep(
                        target, decision.keep.pop(target.name), decision.weights.pop(target.name, None), undo):
                    done.targets.append(target)
    except BaseException:
        undo.restore()
        raise
    return done


def _calibration(model: nn.Module, opts: MagnitudeOptions, context: RunContext,
                 calibration: Iterable[Any] | None) -> tuple[list[Any], bool]:
    """This rank's calibration batches (all of them in one process, random-token ones included) and
    whether they are a share."""
    if not opts.needs_calibration:
        return [], False
    source = calibration if calibration is not None else context.calibration_batches(opts.calibration_batches)
    source = list(source)
    source += random_token_batches(source, opts.random_tokens, model, f"step {context.step_index}")
    return calibration_share(source)


def _dense_stats(model: nn.Module, found: list[PrunableTensor], opts: MagnitudeOptions, batches: list[Any],
                 sharded: bool, stream: BlockStream | None) -> tuple[dict[int, InputStats], Trace | None]:
    """Statistics of the unpruned model, when anything needs them: all of scoring and reconstruction
    without a block stream; with one, only an allocation or a global ranking (the blocks bring their own)."""
    if not opts.needs_calibration:
        return {}, None
    if stream is not None:
        needed = opts.allocation != "uniform" or opts.scope == "global"
        if not needed:
            return {}, None
        return gather(model, found, batches, opts.allocation == "sensitivity", sharded)[0], None
    stats, trace = gather(model, found, batches, opts.needs_gram, sharded)
    return stats, trace


def _groups(model: nn.Module, found: list[PrunableTensor], opts: MagnitudeOptions, batches: list[Any],
            sharded: bool, stream: BlockStream | None, dense: dict[int, InputStats], trace: Trace | None,
            paired: PairedBlocks | None) -> Groups:
    if paired is not None:
        return by_paired_blocks(model, found, paired, batches, opts.match, sharded)
    if stream is not None:
        return by_blocks(model, found, stream, batches, opts.reconstruct, sharded)
    if opts.reconstruct and opts.sequential and trace is not None:
        return by_groups(model, found, batches, dense, trace, sharded)
    return all_at_once(found, dense)
