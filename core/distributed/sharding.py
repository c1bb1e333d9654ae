"""Each rank's share of the data: a global batch split across ranks, evaluation sums."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from ..errors import DataError
from .process import is_distributed, rank, world_size

log = logging.getLogger("torchslim")


class ShardSampler(DistributedSampler):
    """This rank's share of another sampler's order, one global batch at a time, without padding.

    Every epoch the ranks take rank 0's order of ``sampler`` (the user's ``RandomSampler`` with its
    generator, a ``SequentialSampler``, a ``WeightedRandomSampler``, ...), so together they read the
    batches one process reads: global batch ``k`` is ``order[k*B:(k+1)*B]`` for the global batch size
    ``B``, and rank ``r`` takes its entries ``r, r+N, r+2N, ...`` (``B / N`` of them).

    The last, partial global batch (``m < B`` samples) is dropped with ``drop_last``; otherwise it is
    split the same way, so ranks get ``ceil(m/N)`` or ``floor(m/N)`` samples and no sample is repeated.
    A rank left with none reads one sample with weight 0, so every rank takes part in every step.
    :meth:`tail_weight` gives the factor that makes DDP's mean over ranks the mean over the ``m``
    samples, exactly as one process computes it.
    """

    def __init__(self, sampler: Sized, global_batch: int, num_replicas: int, rank: int,
                 drop_last: bool = False) -> None:
        if global_batch % num_replicas:
            raise DataError(f"global batch {global_batch} is not divisible by {num_replicas} processes")
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank,  # type: ignore[arg-type]
                         shuffle=False, drop_last=drop_last)
        self.sampler = sampler
        self.global_batch = global_batch
        # The user's loader reseeds this generator per epoch; keeping it visible lets callers find it.
        self.generator = getattr(sampler, "generator", None)
        self._split(len(sampler))

    def _split(self, length: int) -> None:
        full, tail = divmod(length, self.global_batch)
        self.full_batches = full
        self.tail = 0 if self.drop_last else tail
        self.tail_share = len(range(self.rank, self.tail, self.num_replicas))
        self.num_samples = full * (self.global_batch // self.num_replicas) + (max(1, self.tail_share) if self.tail else 0)
        self.total_size = full * self.global_batch + self.tail

    def tail_weight(self) -> float:
        """Loss factor of this rank's last, partial batch: ``N * (its real samples) / m``."""
        return self.num_replicas * self.tail_share / self.tail if self.tail else 1.0

    def __iter__(self) -> Iterator[int]:
        # A generator function: the order is drawn when the DataLoader asks for the first index, after
        # it drew its worker base seed, exactly as the user's own loader would.
        order = _rank0_order(self.sampler)
        if order.numel() != len(self.sampler):  # type: ignore[arg-type]
            self._split(order.numel())
        cut = self.full_batches * self.global_batch
        mine = order[:cut][self.rank::self.num_replicas]
        if self.tail:
            share = order[cut:cut + self.tail][self.rank::self.num_replicas]
            mine = torch.cat([mine, share if share.numel() else order[:1]])
        yield from mine.tolist()

    def __len__(self) -> int:
        return self.num_samples


def _rank0_order(sampler: Iterable[int]) -> torch.Tensor:
    """Rank 0's order of ``sampler`` on every rank (every rank iterates it, so generators stay in step)."""
    order = torch.tensor(list(sampler), dtype=torch.int64)
    if is_distributed():
        length = torch.tensor([order.numel()], dtype=torch.int64)
        dist.broadcast(length, src=0)
        if order.numel() != int(length):
            order = torch.zeros(int(length), dtype=torch.int64)
        dist.broadcast(order, src=0)
    return order


def _loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    """How ``loader`` loads (workers, collate, pinning), to build this rank's loader the same way."""
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers, "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory,
        "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context, "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if getattr(loader, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = loader.pin_memory_device
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return kwargs


def _user_sampler(loader: DataLoader) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    return getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)


def shard_loader(data: Iterable, where: str) -> tuple[Iterable, str]:
    """This rank's loader for training, and how it was made (``"sharded"``, ``"user"``, ``"iterable"``).

    - A DataLoader whose sampler is already a ``DistributedSampler`` is the user's choice and kept:
      its ``batch_size`` is per rank (``"user"``).
    - A DataLoader over an ``IterableDataset`` is kept: such a dataset must yield this rank's share
      itself (``"iterable"``).
    - Any other DataLoader is rebuilt on the same dataset, collate function and workers with a
      :class:`ShardSampler` over its sampler and ``batch_size / N`` per rank (``"sharded"``): its
      ``batch_size`` stays the global batch, and the ranks read the batches a single process reads.

    Raises :class:`~torchslim.DataError` for anything else, naming the fix. In a single process
    returns ``(data, "single")``.
    """
    if not is_distributed():
        return data, "single"
    count = world_size()
    if not isinstance(data, DataLoader):
        raise DataError(
            f"{where}: under torchrun ({count} processes) train_data must be a torch.utils.data.DataLoader so "
            f"each rank can read its share, got {type(data).__name__}; wrap the data in a DataLoader")
    if isinstance(data.dataset, IterableDataset):
        log.info("%s: train_data is an IterableDataset; it must yield rank %d's share itself", where, rank())
        return data, "iterable"
    if isinstance(_user_sampler(data), DistributedSampler):
        return data, "user"
    if data.batch_size is None:
        raise DataError(
            f"{where}: under torchrun, train_data's DataLoader has a custom batch_sampler, which torchslim "
            f"cannot split across {count} processes; give a DataLoader with batch_size=..., or shard it "
            f"yourself with a DistributedSampler")
    if data.batch_size % count:
        raise DataError(
            f"{where}: train_data's batch_size={data.batch_size} is the global batch and must split evenly "
            f"over {count} processes; use a batch_size divisible by {count} (e.g. "
            f"{max(count, data.batch_size // count * count)}), or pass a DataLoader with a DistributedSampler "
            f"to set the per-process batch yourself")
    return sharded_loader(data, count, rank()), "sharded"


def sharded_loader(data: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """Rank ``rank``'s loader of ``num_replicas``: same dataset, collate and workers, a :class:`ShardSampler`.

    Its batch size is ``data.batch_size / num_replicas``; it shares ``data``'s generator, so reseeding
    the user's loader reseeds it too.
    """
    sampler = ShardSampler(data.sampler, data.batch_size, num_replicas, rank, drop_last=data.drop_last)
    return DataLoader(data.dataset, batch_size=data.batch_size // num_replicas, sampler=sampler, drop_last=False,
                      **_loader_kwargs(data))


def shard_eval(data: Iterable | None, limit: int | None = None) -> tuple[Iterable | None, bool]:
    """This rank's share of the evaluation data, and whether it is a share (counts must then be summed).

    The samples are those one process would read (the first ``limit`` batches when given), each read by
    exactly one rank, without padding. Data that is not a plain map-style DataLoader is returned whole:
    every rank then evaluates all of it and no sum is needed.
    """
    if data is None or not is_distributed():
        return data, False
    if (not isinstance(data, DataLoader) or isinstance(data.dataset, IterableDataset) or data.batch_size is None
            or isinstance(_user_sampler(data), DistributedSampler)):
        return data, False
    if data.generator is not None:
        # A DataLoader draws its worker base seed before the sampler's order; so do we, to read the
        # same samples as one process when the eval loader shuffles.
        torch.empty((), dtype=torch.int64).random_(generator=data.generator)
    order = _rank0_order(data.sampler)
    keep = order.numel() if not data.drop_last else order.numel() // data.batch_size * data.batch_size
    if limit is not None:
        keep = min(keep, limit * data.batch_size)
    mine = order[:keep][rank()::world_size()].tolist()
    kwargs = _loader_kwargs(data)
    kwargs.pop("generator")
    return DataLoader(data.dataset, batch_size=data.batch_size, sampler=mine, drop_last=False, **kwargs), True
