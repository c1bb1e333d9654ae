"""Keeping ranks consistent: identical weights checked, rank 0's values copied, buffers averaged."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ModelError
from ..surgery import fingerprint
from .process import _broadcast_tensor, is_distributed, world_size

log = logging.getLogger("torchslim")


def _structure(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, str(t.dtype), tuple(t.shape)) for name, t in model.state_dict().items()]


def _first_difference(ours: list, theirs: list, other_rank: int) -> str:
    mine, reference = {n: (d, s) for n, d, s in theirs}, {n: (d, s) for n, d, s in ours}
    for name in sorted(set(mine) | set(reference)):
        if mine.get(name) != reference.get(name):
            return (f"{name}: rank 0 has {reference.get(name, 'nothing')}, "
                    f"rank {other_rank} has {mine.get(name, 'nothing')}")
    return "the order of the state dict"


def check_identical(model: nn.Module, where: str) -> str:
    """Raise :class:`~torchslim.ModelError` unless every rank holds bit-identical weights and buffers.

    Compares the :func:`fingerprint` of every rank; returns this rank's fingerprint.
    """
    digest = fingerprint(model)
    if not is_distributed():
        return digest
    every = [None] * world_size()
    dist.all_gather_object(every, digest)
    differ = [r for r, d in enumerate(every) if d != every[0]]
    if differ:
        raise ModelError(
            f"{where}: the model differs between ranks after training (ranks {differ} differ from rank 0); "
            f"every rank must start from the same model and apply the same averaged gradients")
    return digest


def sync_model(model: nn.Module, where: str, *, warn: bool = True) -> bool:
    """Make every rank hold rank 0's model; raise when the ranks' models differ in structure.

    Compression runs on every rank; given the same model, data and seed it gives the same masks and
    factor modules. Different parameter names or shapes mean it did not (a plugin used unseeded
    randomness or this rank's data), which no broadcast can fix: that is a
    :class:`~torchslim.ModelError`. Values that differ (last-bit floating-point differences between
    unlike CPUs or GPUs, or an input model each process initialised at random) are replaced by rank
    0's, with a warning when ``warn``. Returns True when values had to be copied.
    """
    if not is_distributed():
        return False
    structure = hashlib.sha256(repr(_structure(model)).encode()).hexdigest()
    digests = [None] * world_size()
    dist.all_gather_object(digests, (structure, fingerprint(model)))
    if any(s != digests[0][0] for s, _ in digests):
        structures: list[Any] = [None] * world_size()
        dist.all_gather_object(structures, _structure(model))
        differ = [r for r, (s, _) in enumerate(digests) if s != digests[0][0]]
        raise ModelError(
            f"{where}: the model's structure differs between rank 0 and ranks {differ} "
            f"({_first_difference(structures[0], structures[differ[0]], differ[0])}); compression must be "
            f"deterministic given the same model, data and seed on every rank")
    if all(v == digests[0][1] for _, v in digests):
        return False
    if warn:
        log.warning("%s: weights differ between ranks in value only; using rank 0's", where)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_contiguous():
                _broadcast_tensor(tensor)
            else:  # collectives need contiguous memory
                copy = tensor.contiguous()
                _broadcast_tensor(copy)
                tensor.copy_(copy)
    return True


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

    During DDP training each rank's BatchNorm layers track the statistics of its own share of the
    batch; their mean over ranks is the running mean of the global batches. Buffers inside
    parametrizations (pruning masks) are the same on every rank and are left alone.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point() and "parametrizations." not in name:
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world_size())
