"""The process group: torchrun detection, joining once, rank and world size, collectives."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import TorchslimError

log = logging.getLogger("torchslim")
T = TypeVar("T")


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
