"""Built-in fine-tuning: method ``sgd`` (SGD or AdamW, epochs or steps, cosine or constant schedule).

Training goes through the model's modules as they are, so pruning masks registered with
``torch.nn.utils.parametrize`` hold (the optimizer updates ``parametrizations.weight.original``;
the mask buffer is not a parameter) and low-rank factor modules are trained as themselves.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

import torchslim
from torchslim import distributed
from torchslim.batches import split_batch, to_device
from torchslim.datacheck import check_classification_batch, logits_of


#: Offset between the torch seeds of consecutive ranks (dropout, augmentation), far from the step offsets.
RANK_SEED_STRIDE = 1_000_003


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


def _generators(loader: Iterable) -> list[torch.Generator]:
    """The random generators that decide a DataLoader's order and worker seeds."""
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


@contextlib.contextmanager
def _seeded_loader(loader: Iterable) -> Iterator[Any]:
    """Yield ``reseed(seed)``, which seeds the loader's generators; their states are restored after.

    The user's loader keeps its own shuffle sequence, while every run of the step sees the same order.
    """
    generators = _generators(loader)
    states = [g.get_state() for g in generators]

    def reseed(seed: int) -> None:
        for gen in generators:
            gen.manual_seed(seed)

    try:
        yield reseed
    finally:
        for gen, state in zip(generators, states):
            gen.set_state(state)


class SGDFinetune:
    """Fine-tune with SGD (momentum) or AdamW on ``context.train_data`` to recover accuracy.

    The loss is the user's ``loss_fn(output, target)``, or cross-entropy on the logits (with
    ``label_smoothing``). Seeded from the run seed: two runs on CPU give bit-identical weights.
    """

    class Options(BaseModel):
        """Settings of the ``sgd`` fine-tuning method."""

        model_config = ConfigDict(extra="forbid")

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
        def _one_length(self) -> "SGDFinetune.Options":
            if self.epochs is not None and self.steps is not None:
                raise ValueError(
                    f"give either epochs ({self.epochs}) or steps ({self.steps}), not both")
            return self

    @torchslim.hookimpl
    def finetune(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: SGDFinetune.Options = step.options
        where = f"finetune/{step.method}"
        data = context.train_data
        if data is None:
            raise torchslim.DataError(f"{where} needs train_data; pass train_data=... to Engine.run")
        if opts.label_smoothing and context.loss_fn is not None:
            raise torchslim.RecipeError(
                f"{where}: label_smoothing={opts.label_smoothing} applies to the default cross-entropy, "
                f"but a loss_fn was given; drop label_smoothing or build it into loss_fn")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise torchslim.ModelError(f"{where}: the model has no trainable parameters (all requires_grad=False)")

        seeds = context.generator(context.step_index)
        # Ranks draw independent dropout/augmentation noise; rank 0 draws what a single process would.
        torch.manual_seed(context.seed + context.step_index + RANK_SEED_STRIDE * distributed.rank())
        show = (opts.progress if opts.progress is not None else sys.stderr.isatty()) and distributed.is_main()
        with distributed.training(model, data, where, context.device) as run:
            per_epoch = self._batches_per_epoch(run.data, opts, where)
            total = opts.steps if opts.steps is not None else (opts.epochs or 1) * per_epoch
            optimizer = self._optimizer(params, opts)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda i: lr_factor(i, total, opts.warmup_steps, opts.schedule))
            done, epoch, epoch_losses = 0, 0, []
            model.train()
            with _seeded_loader(data) as reseed, tqdm(total=total, desc=where, disable=not show, leave=False) as bar:
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
                        loss = self._train_step(run.model, batch, context, opts, optimizer, params,
                                                f"train_data batch {seen} of epoch {epoch}",
                                                weight=run.loss_weight(seen - 1))
                        scheduler.step()
                        done += 1
                        epoch_losses.append(loss)
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if seen == 0:
                        raise torchslim.DataError(f"{where}: train_data yielded no batches; pass a non-empty DataLoader")
            final = run.mean(sum(epoch_losses) / len(epoch_losses))
        epochs = epoch if opts.steps is None else done / per_epoch
        info: dict[str, Any] = {"epochs": epochs, "steps": done, "final_loss": final}
        if run.world_size > 1:
            info.update(processes=run.world_size, batch_per_process=run.per_rank_batch, sharding=run.sharding)
        return torchslim.StepResult(model=model, info=info)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _batches_per_epoch(data: Iterable, opts: "SGDFinetune.Options", where: str) -> int:
        try:
            length = len(data)  # type: ignore[arg-type]
        except TypeError:
            length = None
        if length is None:
            if opts.max_batches_per_epoch is not None:
                return opts.max_batches_per_epoch
            if opts.steps is not None:
                return opts.steps
            raise torchslim.DataError(
                f"{where}: train_data has no len(), so an epoch's length is unknown; "
                f"set steps=... or max_batches_per_epoch=...")
        if length == 0:
            raise torchslim.DataError(f"{where}: train_data yielded no batches; pass a non-empty DataLoader")
        if opts.max_batches_per_epoch is not None:
            return min(length, opts.max_batches_per_epoch)
        return length

    @staticmethod
    def _optimizer(params: list[nn.Parameter], opts: "SGDFinetune.Options") -> torch.optim.Optimizer:
        if opts.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
        return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)

    def _train_step(self, model: nn.Module, batch: Any, context: Any, opts: "SGDFinetune.Options",
                    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], where: str,
                    weight: float = 1.0) -> float:
        inputs, target = split_batch(batch)
        loss = self.compute_loss(model, inputs, target, context, opts, where)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise torchslim.DataError(
                f"{where}: the loss must be a scalar tensor, got "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise torchslim.ModelError(
                f"{where}: the loss became {value} (lr={optimizer.param_groups[0]['lr']:.3g}); "
                f"lower lr or set grad_clip")
        optimizer.zero_grad(set_to_none=True)
        # Under DDP the last, partial batch is split unevenly; the weight makes the mean over ranks
        # the mean over the global batch (see torchslim.distributed.ShardSampler).
        (loss * weight if weight != 1.0 else loss).backward()
        if opts.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        return value

    # ------------------------------------------------------------------ the loss: what a subclass replaces
    def compute_loss(self, model: nn.Module, inputs: Any, target: Any, context: Any,
                     opts: "SGDFinetune.Options", where: str) -> torch.Tensor:
        """The scalar loss of one training batch; a subclass overrides this to train on another objective.

        ``model`` is the module to call (a DistributedDataParallel wrapper when distributed: call it
        through ``context.forward(model, inputs, where)`` so the gradients are synchronised),
        ``inputs`` and ``target`` are the batch as :func:`torchslim.batches.split_batch` splits it
        (``target`` is None for batches of inputs only), and ``where`` names the batch for error
        messages. The loss must be a mean over the batch. Everything around it (optimizer, schedule,
        seeding, data order, gradient clipping, the finiteness check) stays the loop's. The default is
        :meth:`task_loss` of the model's output.

        >>> class Quadratic(SGDFinetune):  # a method that only changes the loss
        ...     def compute_loss(self, model, inputs, target, context, opts, where):
        ...         return context.forward(model, inputs, where).pow(2).mean()
        """
        output = context.forward(model, inputs, where)
        return self.task_loss(output, target, context, opts, where)

    @staticmethod
    def task_loss(output: Any, target: Any, context: Any, opts: "SGDFinetune.Options", where: str) -> torch.Tensor:
        """The task loss of ``output``: the user's ``loss_fn(output, target)``, else checked cross-entropy.

        The default cross-entropy reads the logits (a tensor, a dict's ``"logits"`` or ``.logits``),
        checks the batch (labels in range, or soft labels of the logits' shape) and applies
        ``opts.label_smoothing``.
        """
        if context.loss_fn is not None:
            return context.loss(output, to_device(target, context.device))
        logits = logits_of(output, where)
        check_classification_batch(logits, target, where, allow_soft=True)
        target = to_device(target, logits.device)
        if not target.is_floating_point():
            target = target.long()
        return nn.functional.cross_entropy(logits, target, label_smoothing=opts.label_smoothing)
