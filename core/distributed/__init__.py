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

from .consistency import average_buffers, check_identical, fingerprint, sync_model
from .process import (
    all_reduce_sum, barrier, broadcast_object, is_distributed, is_main, launched, local_rank, main_only, rank,
    same_on_every_rank, setup, world_size,
)
from .sharding import ShardSampler, shard_eval, shard_loader, sharded_loader
from .training import Training, training, wrap

__all__ = [
    "launched", "is_distributed", "setup", "rank", "local_rank", "world_size", "is_main", "barrier",
    "all_reduce_sum", "broadcast_object", "same_on_every_rank", "main_only", "fingerprint", "check_identical",
    "sync_model", "average_buffers", "ShardSampler", "shard_loader", "sharded_loader", "shard_eval", "wrap",
    "Training", "training",
]
