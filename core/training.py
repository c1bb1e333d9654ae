"""The training loop every fine-tuning method may share: :func:`fit` with :class:`TrainingOptions`.

SGD (momentum) or AdamW, epochs or steps, warm-up then cosine or constant learning rate, gradient
clipping, seeded data order, DistributedDataParallel under ``torchrun``, a finiteness check on every
loss. Training goes through the model's modules as they are, so pruning masks registered with
``torch.nn.utils.parametrize`` hold (the optimizer updates ``parametrizations.weight.original``; the
mask buffer is not a parameter) and factor modules train as themselves. A method supplies only its
loss (``loss=...``); the built-in ``sgd`` method uses :func:`task_loss`, a distillation plugin adds
a teacher term::

    from torchslim.training import TrainingOptions, fit

    class MyTrainer:
        Options = TrainingOptions

        @torchslim.hookimpl
        def finetune(self, model, step, context):
            info = fit(model, context, step.options, "finetune/mine", loss=my_loss)
            return torchslim.StepResult(model=model, info=info)
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from tqdm import tqdm

from . import distributed
from .batches import split_batch, to_device
from .datacheck import check_classification_batch, logits_of
from .errors import DataError, ModelError, RecipeError
from .schema import StrictModel
from .seeding import seeded_loader

#: Offset between the torch seeds of consecutive ranks (dropout, augmentation), far from the step offsets.
RANK_SEED_STRIDE = 1_000_003

#: ``loss(model, inputs, target, where) -> scalar``: one training batch's loss (a mean over the batch).
BatchLoss = Callable[[nn.Module, Any, Any, str], torch.Tensor]


class TrainingOptions(StrictModel):
    """Settings of a training loop (the ``sgd`` method's options; other trainers extend them)."""

    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="optimizer: 'sgd' (with momentum) or 'adamw'")
    lr: float = Field(0.01, gt=0, le=10, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adamw)")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="weight decay (decoupled for adamw)")
    epochs: int | None = Field(
        None, ge=1, le=10_000,
        description="passes over train_data; give epochs or steps, not both (default: 1 epoch)")
    steps: int | None = Field(
        None, ge=1, le=10_000_000,
        description="optimizer steps in total, cycling over train_data; instead of epochs")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="learning-rate schedule after warm-up: 'cosine' decay to 0 or 'constant'")
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up")
    grad_clip: float | None = Field(
        None, gt=0, description="clip the gradient norm to this value (default: no clipping)")
    max_batches_per_epoch: int | None = Field(
        None, ge=1, description="use at most this many batches of train_data per epoch")
    progress: bool | None = Field(
        None, description="show a tqdm progress bar; default: only when stderr is a terminal")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="label smoothing of the default cross-entropy loss")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainingOptions":
        if self.epochs is not None and self.steps is not None:
            raise ValueError(
                f"give either epochs ({self.epochs}) or steps ({self.steps}), not both")
        return self


    def longer(self, factor: float) -> "TrainingOptions":
        """These options training about ``factor`` times as long (epochs or steps scaled, rounded up)."""
        if self.steps is not None:
            return self.model_copy(update={"steps": max(self.steps + 1, math.ceil(self.steps * factor))})
        epochs = self.epochs or 1
        return self.model_copy(update={"epochs": max(epochs + 1, math.ceil(epochs * factor))})


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier for 0-based ``step`` of ``total``.

    Linear warm-up from ``1/warmup`` to 1 over the first ``warmup`` steps, then 1 (``constant``) or
    a half cosine from 1 down towards 0 at step ``total`` (``cosine``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def task_loss(output: Any, target: Any, context: Any, where: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """The task loss of ``output``: the user's ``loss_fn(output, target)``, else checked cross-entropy.

    The default cross-entropy reads the logits (``context.scored``: ``output_fn``, ``evaluation.output``,
    else a tensor, a dict's ``"logits"``, ``.logits`` or a tuple's first item),
    checks the batch (labels in range, or soft labels of the logits' shape) and applies
    ``label_smoothing``.
    """
    if context.loss_fn is not None:
        return context.loss(output, to_device(target, context.device))
    logits = context.scored(output, where) if hasattr(context, "scored") else logits_of(output, where)
    check_classification_batch(logits, target, where, allow_soft=True)
    target = to_device(target, logits.device)
    if not target.is_floating_point():
        target = target.long()
    return nn.functional.cross_entropy(logits, target, label_smoothing=label_smoothing)


def fit(model: nn.Module, context: Any, options: TrainingOptions, where: str,
        loss: BatchLoss | None = None) -> dict[str, Any]:
    """Train ``model`` in place on ``context.train_data``; returns the step info (epochs, steps, final loss).

    ``loss(model, inputs, target, where)`` gives one batch's loss; call the model through
    ``context.forward(model, inputs, where)`` (under DDP ``model`` is the wrapper, and calling it
    synchronises the gradients). The default is :func:`task_loss` of the model's output. Seeded from
    the run seed and step: two runs on CPU give bit-identical weights.
    """
    opts = options
    data = context.train_data
    if data is None:
        raise DataError(f"{where} needs train_data; pass train_data=... to Engine.run")
    if opts.label_smoothing and context.loss_fn is not None:
        raise RecipeError(
            f"{where}: label_smoothing={opts.label_smoothing} applies to the default cross-entropy, "
            f"but a loss_fn was given; drop label_smoothing or build it into loss_fn")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"{where}: the model has no trainable parameters (all requires_grad=False)")
    if loss is None:
        def loss(net: nn.Module, inputs: Any, target: Any, at: str) -> torch.Tensor:
            return task_loss(context.forward(net, inputs, at), target, context, at, opts.label_smoothing)

    # Ranks draw independent dropout/augmentation noise; rank 0 draws what a single process would.
    torch.manual_seed(context.seed + context.step_index + RANK_SEED_STRIDE * distributed.rank())
    with distributed.training(model, data, where, context.device) as run:
        per_epoch = batches_per_epoch(run.data, opts, where)
        total = opts.steps if opts.steps is not None else (opts.epochs or 1) * per_epoch
        done, epochs, final = _loop(model, run, context, opts, params, loss, total, where)
    info: dict[str, Any] = {"epochs": epochs if opts.steps is None else done / per_epoch, "steps": done,
                            "final_loss": final}
    if run.world_size > 1:
        info.update(processes=run.world_size, batch_per_process=run.per_rank_batch, sharding=run.sharding)
    return info


def _loop(model: nn.Module, run: Any, context: Any, opts: TrainingOptions, params: list[nn.Parameter],
          loss: BatchLoss, total: int, where: str) -> tuple[int, int, float]:
    """The epochs: reseed the data order, step the optimizer ``total`` times; returns (steps, epochs, loss)."""
    seeds = context.generator(context.step_index)
    show = (opts.progress if opts.progress is not None else sys.stderr.isatty()) and distributed.is_main()
    optimizer = make_optimizer(params, opts)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, total, opts.warmup_steps, opts.schedule))
    done, epoch, epoch_losses = 0, 0, []
    model.train()
    with seeded_loader(context.train_data) as reseed, tqdm(total=total, desc=where, disable=not show,
                                                           leave=False) as bar:
        while done < total:
            epoch_seed = int(torch.randint(0, 2**62, (1,), generator=seeds))
            reseed(epoch_seed)
            run.set_epoch(epoch_seed)  # a user's DistributedSampler shuffles with its seed + this
            epoch += 1
            epoch_losses = []
            seen = 0
            for batch in run.data:
                if done >= total or (opts.max_batches_per_epoch is not None and seen >= opts.max_batches_per_epoch):
                    break
                seen += 1
                value = train_step(run.model, batch, loss, optimizer, params, opts,
                                   f"train_data batch {seen} of epoch {epoch}", weight=run.loss_weight(seen - 1))
                scheduler.step()
                done += 1
                epoch_losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if seen == 0:
                raise DataError(f"{where}: train_data yielded no batches; pass a non-empty DataLoader")
    return done, epoch, run.mean(sum(epoch_losses) / len(epoch_losses))


def batches_per_epoch(data: Iterable, opts: TrainingOptions, where: str) -> int:
    """Batches one epoch takes: ``len(data)`` capped by ``max_batches_per_epoch`` (or what options imply)."""
    try:
        length = len(data)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if length is None:
        if opts.max_batches_per_epoch is not None:
            return opts.max_batches_per_epoch
        if opts.steps is not None:
            return opts.steps
        raise DataError(f"{where}: train_data has no len(), so an epoch's length is unknown; "
                        f"set steps=... or max_batches_per_epoch=...")
    if length == 0:
        raise DataError(f"{where}: train_data yielded no batches; pass a non-empty DataLoader")
    if opts.max_batches_per_epoch is not None:
        return min(length, opts.max_batches_per_epoch)
    return length


def make_optimizer(params: list[nn.Parameter], opts: TrainingOptions) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW, as ``opts.optimizer`` says."""
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def train_step(model: nn.Module, batch: Any, loss: BatchLoss, optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], opts: TrainingOptions, where: str, weight: float = 1.0) -> float:
    """One optimizer step on ``batch``; returns the loss. Fails clearly on a non-scalar or non-finite loss."""
    inputs, target = split_batch(batch)
    value_t = loss(model, inputs, target, where)
    if not isinstance(value_t, torch.Tensor) or value_t.numel() != 1:
        raise DataError(
            f"{where}: the loss must be a scalar tensor, got "
            f"{tuple(value_t.shape) if isinstance(value_t, torch.Tensor) else type(value_t).__name__}")
    value = float(value_t.detach())
    if not math.isfinite(value):
        raise ModelError(f"{where}: the loss became {value} (lr={optimizer.param_groups[0]['lr']:.3g}); "
                         f"lower lr or set grad_clip")
    optimizer.zero_grad(set_to_none=True)
    # Under DDP the last, partial batch is split unevenly; the weight makes the mean over ranks
    # the mean over the global batch (see torchslim.distributed.ShardSampler).
    (value_t * weight if weight != 1.0 else value_t).backward()
    if opts.grad_clip is not None:
        nn.utils.clip_grad_norm_(params, opts.grad_clip)
    optimizer.step()
    return value
