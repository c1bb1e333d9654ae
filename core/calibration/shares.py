"""Calibration across processes: each rank reads a share of the batches, statistics are summed.

Under torchrun every rank runs the same compression step. Rank ``r`` of ``N`` takes the calibration
batches ``r, r + N, r + 2N, ...`` (the batches one process would read, each read once), gathers its
statistics, and :func:`sum_over_ranks` adds them up, so every rank holds the statistics of all the
batches and makes the same masks and factors. With fewer batches than ranks every rank reads them
all and nothing is summed.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from .. import distributed


def calibration_share(batches: Iterable[Any]) -> tuple[list[Any], bool]:
    """This rank's calibration batches, and whether they are a share (statistics must then be summed)."""
    batches = list(batches)
    count = distributed.world_size()
    if count <= 1 or len(batches) < count:
        return batches, False
    return batches[distributed.rank()::count], True


def sum_over_ranks(tensors: Sequence[torch.Tensor | None]) -> None:
    """Sum every tensor over the ranks, in place, in the order given (the same on every rank).

    The tensors are summed in float64 and written back in their own dtype; ``None`` entries are
    skipped (every rank must pass ``None`` at the same positions).
    """
    for tensor in tensors:
        if tensor is None:
            continue
        total = distributed.all_reduce_sum(tensor.double())
        tensor.copy_(total.to(tensor.dtype))
