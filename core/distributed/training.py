"""Training across ranks: the DistributedDataParallel wrapper and the per-step helpers."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from ..surgery import model_device
from .consistency import average_buffers, check_identical, sync_model
from .process import all_reduce_sum, is_distributed, world_size
from .sharding import ShardSampler, _user_sampler, shard_loader


def wrap(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``model`` in a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper (itself when single).

    The wrapper trains the model's own parameters: with pruning masks these are
    ``parametrizations.weight.original`` (the mask is a buffer and stays as it is), low-rank factor
    modules train as themselves. Buffers are not broadcast every step (BatchNorm uses batch statistics
    while training, and masks are the same everywhere); :func:`average_buffers` reconciles them after.
    """
    if not is_distributed():
        return model
    device = torch.device(device) if device is not None else model_device(model)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers; older versions know only the first.
    option = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    return ddp(model, device_ids=device_ids, **{option: False})


@dataclass
class Training:
    """What a training loop uses inside :func:`training`.

    Attributes:
        model: the module to call in the loop (a DDP wrapper when distributed); the optimizer takes the
            parameters of the model given to :func:`training`, which are the same tensors.
        data: this rank's loader.
        world_size: number of processes.
        sharding: how ``data`` was made (see :func:`shard_loader`).
    """

    model: nn.Module
    data: Iterable
    world_size: int
    sharding: str

    def set_epoch(self, epoch: int) -> None:
        """Call a user's ``DistributedSampler.set_epoch(epoch)`` so it reshuffles; no-op otherwise.

        Pass the same number on every rank (the ``sgd`` method passes a seed drawn from the run seed).
        """
        if self.sharding == "user":
            sampler = _user_sampler(self.data)  # type: ignore[arg-type]
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def loss_weight(self, index: int) -> float:
        """The factor for the loss of this rank's batch ``index`` (0-based) of an epoch.

        1 except for the last, partial batch of a sharded loader, whose ranks hold unequal shares
        (see :meth:`ShardSampler.tail_weight`); the loss must be a mean over the batch.
        """
        sampler = getattr(self.data, "sampler", None)
        if self.sharding == "sharded" and isinstance(sampler, ShardSampler) and index == sampler.full_batches:
            return sampler.tail_weight()
        return 1.0

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (a loss averaged over the global batch)."""
        if self.world_size == 1:
            return value
        return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64))) / self.world_size

    @property
    def per_rank_batch(self) -> int | None:
        """The batch size each rank reads, when known."""
        return getattr(self.data, "batch_size", None)


@contextlib.contextmanager
def training(model: nn.Module, data: Iterable, where: str,
             device: torch.device | str | None = None) -> Iterator[Training]:
    """Train ``model`` on ``data`` with DistributedDataParallel when distributed, plainly otherwise.

    Inside the block, call ``t.model`` and iterate ``t.data``; build the optimizer on ``model``'s own
    parameters. On entry every rank takes rank 0's model (:func:`sync_model`); on a normal exit the
    BatchNorm statistics are averaged over ranks and the ranks are checked to hold identical weights
    (:func:`check_identical`). A loop written for one process needs no other change::

        with distributed.training(model, loader, "finetune/mine") as t:
            for x, y in t.data:
                loss = nn.functional.cross_entropy(t.model(x), y)
                optimizer.zero_grad(); loss.backward(); optimizer.step()
    """
    if not is_distributed():
        yield Training(model, data, 1, "single")
        return
    loader, sharding = shard_loader(data, where)
    sync_model(model, where)
    state = Training(wrap(model, device), loader, world_size(), sharding)
    yield state
    state.model = model  # drop the DDP wrapper (and its gradient hooks) before the model is used elsewhere
    average_buffers(model)
    check_identical(model, where)
