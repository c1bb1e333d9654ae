"""The order a round prunes in, and the statistics each group of tensors is decided on.

Each function yields ``(group, stats)``; the caller prunes the group before asking for the next one, so a
sequential order calibrates every group on the outputs of the groups already pruned:

- :func:`all_at_once`: every tensor from the unpruned model's statistics (one pass);
- :func:`by_blocks`: block by block through a :class:`~torchslim.calibration.BlockStream` (models of
  repeated blocks: the model plus one block's activations in memory, two passes of each block), then
  the tensors outside the blocks (a head, a pooler) from one last pass of the whole model;
- :func:`by_paired_blocks`: as :func:`by_blocks` with a dense stream beside the pruned one
  (:class:`~torchslim.calibration.PairedBlocks`), layer group by layer group inside each block, each
  layer's statistics carrying the target the step's ``match`` asks for;
- :func:`by_groups`: layer group by layer group in forward order (layers fed one input together),
  each from a pass of the model cut short after the group (any model; a pass per group).

Under torchrun every statistic is summed over the ranks (:func:`.calibration.sum_stats`).
"""

from __future__ import annotations

from typing import Any, Iterator

from torch import nn

from torchslim.calibration import BlockStream, PairedBlocks, layer_groups, paired_stats, sum_points

from .calibration import InputStats, StatsHooks, Trace, collect_input_stats, sum_stats
from .tensors import PrunableTensor

Groups = Iterator[tuple[list[PrunableTensor], dict[int, InputStats]]]


def modules_of(found: list[PrunableTensor]) -> list[nn.Module]:
    """Every module holding a weight of ``found`` (the ones calibration hooks)."""
    return [m for t in found if not t.is_bias for _, m, _ in t.holders]


def gather(model: nn.Module, found: list[PrunableTensor], batches: list[Any], gram: bool, sharded: bool,
           stop_after: dict[int, int] | None = None) -> tuple[dict[int, InputStats], Trace]:
    """Statistics of ``found``'s modules over ``batches`` (summed over ranks when ``sharded``)."""
    stats, trace = collect_input_stats(model, modules_of(found), batches, gram=gram, stop_after=stop_after)
    if sharded:
        sum_stats(stats, modules_of(found))
    return stats, trace


def all_at_once(found: list[PrunableTensor], stats: dict[int, InputStats]) -> Groups:
    yield found, stats


def _by_block(found: list[PrunableTensor], stream: BlockStream
              ) -> tuple[dict[int, list[PrunableTensor]], list[PrunableTensor]]:
    """The targets of each block (by index), and those outside every block (biases included)."""
    per_block: dict[int, list[PrunableTensor]] = {}
    outside: list[PrunableTensor] = []
    for target in found:
        index = stream.inside(target.module)
        (outside if index is None or target.is_bias else per_block.setdefault(index, [])).append(target)
    return per_block, outside


def by_blocks(model: nn.Module, found: list[PrunableTensor], stream: BlockStream, batches: list[Any],
              gram: bool, sharded: bool) -> Groups:
    """Block by block on the pruned model's own activations, then the tensors outside the blocks."""
    per_block, outside = _by_block(found, stream)
    for index in range(len(stream.blocks)):
        group = per_block.get(index)
        if group:
            hooks = StatsHooks(modules_of(group), gram)
            with hooks:
                stream.run(index, on_batch=hooks.next_batch)
            stats = hooks.stats
            if sharded:
                sum_stats(stats, modules_of(group))
            yield group, stats
        if index < len(stream.blocks) - 1:
            stream.run(index, advance=True)
    if outside:
        yield outside, gather(model, outside, batches, gram, sharded)[0]


def by_paired_blocks(model: nn.Module, found: list[PrunableTensor], paired: PairedBlocks, batches: list[Any],
                     match: str, sharded: bool) -> Groups:
    """Block by block, and inside each block layer group by layer group in forward order, each layer's
    statistics from the pruned model's activations paired with the dense model's (``match``)."""
    per_block, outside = _by_block(found, paired.compressed)
    for index, reference in paired.walk():
        group = per_block.get(index)
        if not group:
            continue
        block = paired.blocks[index]
        modules = dict(block.named_modules())
        name_of = {id(m): name for name, m in modules.items()}
        names = list(dict.fromkeys(name_of[id(m)] for m in modules_of(group) if id(m) in name_of))
        first = paired.compressed.batch_inputs(0)
        points = sum_points(block, names, first) if match == "stream" else {}
        ordered = layer_groups(block, names, first)
        ran = {name for sub in ordered for name in sub}
        for sub in ordered + [[n for n in names if n not in ran]]:
            members = [t for t in group if any(name_of.get(id(m)) in sub for m in modules_of([t]))]
            if not members:
                continue
            pairs = paired_stats(block, reference, sub, paired.compressed, paired.dense, match, points, sharded)
            yield members, {id(modules[name]): InputStats(sumsq=p.gram.diagonal().clone(), gram=p.gram,
                                                          rows=0, paired=p) for name, p in pairs.items()}
    if outside:
        yield outside, gather(model, outside, batches, True, sharded)[0]


def by_groups(model: nn.Module, found: list[PrunableTensor], batches: list[Any], stats: dict[int, InputStats],
              trace: Trace, sharded: bool) -> Groups:
    """Group by group in forward order, each from a pass cut short once the group has run."""
    for index, group in enumerate(forward_groups(found, trace)):
        if index > 0:
            expected = {id(m): trace.calls.get(id(m), 1) for m in modules_of(group)}
            fresh, _ = gather(model, group, batches, True, sharded, stop_after=expected)
            stats.update(fresh)
        yield group, stats


def forward_groups(found: list[PrunableTensor], trace: Trace) -> list[list[PrunableTensor]]:
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
