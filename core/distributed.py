"""Several processes, one result: torchrun detection, data sharding, DistributedDataParallel, checks.

Under ``torchrun --nproc-per-node N`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) every process runs the same recipe. The
first call of :func:`is_distributed` joins the process group, once per process: gloo for CPU
tensors, plus NCCL for CUDA tensors where CUDA is available (``"cpu:gloo,cuda:nccl"``). A
process group the user created before is used as it is.

What the ranks share:

- **Compression** runs on every rank on the same model, data and seed, so every rank makes the
  same masks and factor modules; :func:`sync_model` checks the structure is the same everywhere
  and copies rank 0's values where they differ (floating-point noise between unlike machines).
- **Fine-tuning** trains a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper of the
  compressed model (:func:`training`) on this rank's share of the data (:func:`shard_loader`):
  the loader's ``batch_size`` is the *global* batch and each rank gets ``batch_size / N`` of it,
  so a recipe gives the same training on 1 or N processes. Gradients are averaged by DDP.
- **Evaluation** counts are summed over ranks (:func:`shard_eval`, :func:`all_reduce_sum`), so
  every rank reports the metric of the whole eval set.
- **Files and progress** are rank 0's job: check :func:`is_main`.

Example (``train.py``, run as ``torchrun --nproc-per-node 2 train.py``)::

    import torchslim
    from torchslim import distributed

    result = torchslim.Engine().run(model, recipe, train_data=train, eval_data=test)
    if distributed.is_main():
        torchslim.save(result, "out/")
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sized, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from .errors import DataError, ModelError, TorchslimError

log = logging.getLogger("torchslim")
T = TypeVar("T")

__all__ = [
    "launched", "is_distributed", "setup", "rank", "local_rank", "world_size", "is_main", "barrier",
    "all_reduce_sum", "broadcast_object", "same_on_every_rank", "main_only", "fingerprint", "check_identical",
    "sync_model", "average_buffers", "ShardSampler", "shard_loader", "sharded_loader", "shard_eval", "wrap",
    "Training", "training",
]


# ---------------------------------------------------------------------------------- environment
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TorchslimError(f"environment variable {name}={raw!r} must be an integer (torchrun sets it)") from None


def launched() -> bool:
    """True when a launcher such as torchrun started this process as one of several ranks."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def _init_process_group() -> None:
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        # One group, two backends: CPU tensors (counts, checksums) go over gloo, CUDA ones over NCCL.
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (ValueError, RuntimeError) as exc:
        raise TorchslimError(
            f"cannot join the process group (RANK={os.environ.get('RANK')}, "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
            f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {exc}; launch with torchrun, which sets all four"
        ) from exc
    atexit.register(_destroy)
    if dist.get_rank() != 0:
        # Rank 0 reports progress; the others only speak up for warnings and errors.
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    log.info("joined process group: rank %d of %d, backend %s", dist.get_rank(), dist.get_world_size(), backend)


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when this process is one rank of several; joins torchrun's process group on first use."""
    if not dist.is_available():
        return False
    if not dist.is_initialized():
        if not launched():
            return False
        _init_process_group()
    return dist.get_world_size() > 1


def setup(device: str | torch.device | None = None) -> torch.device | None:
    """Join the process group when launched by torchrun; return the device this rank should use.

    Under torchrun each process drives the GPU numbered by its ``LOCAL_RANK``, so a CUDA ``device``
    becomes ``cuda:LOCAL_RANK``; other devices (and ``None``) are returned unchanged.
    """
    distributed = is_distributed()
    if device is None:
        return None
    device = torch.device(device)
    if distributed and device.type == "cuda":
        local = torch.device("cuda", local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(local)
        if device.index is not None and device.index != local.index:
            log.warning("device %s replaced by %s: under torchrun rank %d uses the GPU of its LOCAL_RANK",
                        device, local, rank())
        return local
    return device


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not set)."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def same_on_every_rank(value: Any) -> bool:
    """True when every rank passes an equal ``value`` (picklable); every rank must call it.

    It returns only after every rank has called it, so it also orders "everyone has read" before
    "rank 0 writes".
    """
    if not is_distributed():
        return True
    every: list[Any] = [None] * world_size()
    dist.all_gather_object(every, value)
    return all(v == every[0] for v in every)


def main_only(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone while the others wait, and return its result on every rank.

    For measurements that must not compete for the machine (latency) or need not run N times.
    """
    if not is_distributed():
        return fn()
    if is_main():
        try:
            result = fn()
        except Exception as exc:
            broadcast_object((None, f"{type(exc).__name__}: {exc}"))  # release the waiting ranks
            raise
        broadcast_object((result, None))
        return result
    result, error = broadcast_object((None, None))
    if error is not None:
        raise TorchslimError(f"rank 0 failed: {error}")
    return result


def _broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> None:
    # Gloo has no bool collective; a bool tensor travels as its bytes.
    dist.broadcast(tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor, src=src)


# ---------------------------------------------------------------------------------- model checks
def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict: names, dtypes, shapes and bytes."""
    from .checkpoint import model_fingerprint

    return model_fingerprint(model)


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


# ---------------------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------------------- training
def wrap(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``model`` in a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper (itself when single).

    The wrapper trains the model's own parameters: with pruning masks these are
    ``parametrizations.weight.original`` (the mask is a buffer and stays as it is), low-rank factor
    modules train as themselves. Buffers are not broadcast every step (BatchNorm uses batch statistics
    while training, and masks are the same everywhere); :func:`average_buffers` reconciles them after.
    """
    if not is_distributed():
        return model
    device = torch.device(device) if device is not None else _device_of(model)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers; older versions know only the first.
    option = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    return ddp(model, device_ids=device_ids, **{option: False})


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


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
