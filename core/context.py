"""The :class:`RunContext` handed to every hook."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .batches import call_model, first_tensor, iterate, split_batch, to_device
from .datacheck import scored_output
from .errors import DataError

LossFn = Callable[[Any, Any], torch.Tensor]
MetricFn = Callable[[nn.Module, Iterable], float]


@dataclass
class RunContext:
    """What a plugin may use besides the model and its step.

    Attributes:
        train_data: iterable of training batches (``(inputs, target)`` by default), or None.
        eval_data: iterable of evaluation batches, or None.
        example_inputs: the inputs of one forward pass (shape probes, MACs, latency): a tuple of
            positional inputs or a dict of keyword inputs (see :func:`torchslim.batches.as_inputs`).
        original_model: the untouched input model in eval mode with gradients off (teacher, calibration).
            It is a copy, made on first access (so runs that never ask for it do not hold a second
            copy in memory): plugins must not change it.
        loss_fn: ``loss_fn(output, target) -> scalar``; cross-entropy when the user gave none.
        metric_fn: the user's ``metric_fn(model, eval_data) -> float``, replacing top-1 accuracy.
        output_fn: the user's ``output_fn(model_output) -> tensor`` choosing what is scored (logits);
            without it the recipe's ``evaluation.output`` names it (see :meth:`scored`).
        device: where the model runs.
        seed: the run's seed; plugins seed their own randomness from it.
        recipe: the validated recipe being run.
        evaluation: the recipe's evaluation settings.
        logger: a :class:`logging.Logger` plugins should log to.
        state: scratch space shared between steps of one run (e.g. calibration statistics).
        step_index: 1-based index of the running step (0 while evaluating the baseline).
    """

    train_data: Iterable | None = None
    eval_data: Iterable | None = None
    example_inputs: tuple | dict = ()
    original_factory: Callable[[], nn.Module] | None = field(default=None, repr=False)
    _original: nn.Module | None = field(default=None, repr=False)
    loss_fn: LossFn | None = None
    metric_fn: MetricFn | None = None
    output_fn: Callable[[Any], torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    recipe: Any = None
    evaluation: Any = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("torchslim"))
    state: dict[str, Any] = field(default_factory=dict)
    step_index: int = 0
    runner: Callable[[nn.Module, Any], Any] | None = field(default=None, repr=False)

    def run_step(self, model: nn.Module, step: Any) -> Any:
        """Run another method as a nested step, e.g. fine-tuning between pruning rounds.

        ``step`` is a recipe step in either form (``{"finetune": {"method": "sgd", "epochs": 1}}``);
        it is validated like a recipe step and the named plugin's hook is called. Returns its
        :class:`~torchslim.StepResult`.
        """
        if self.runner is None:
            raise RuntimeError("run_step needs a context created by torchslim.Engine")
        return self.runner(model, step)

    @property
    def original_model(self) -> nn.Module | None:
        """The untouched input model (eval mode, no gradients), copied on first access."""
        if self._original is None and self.original_factory is not None:
            self._original = self.original_factory()
        return self._original

    @original_model.setter
    def original_model(self, model: nn.Module | None) -> None:
        self._original = model

    def scored(self, output: Any, where: str = "a batch") -> torch.Tensor:
        """The tensor of ``output`` that metrics and the default loss read: ``output_fn``, else the recipe's
        ``evaluation.output`` name, else the tensor, its ``logits``, or a tuple's first item."""
        name = getattr(self.evaluation, "output", None) if self.evaluation is not None else None
        return scored_output(output, where, name, self.output_fn)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The task loss: the user's ``loss_fn`` (on the raw output) or cross-entropy on :meth:`scored`."""
        if self.loss_fn is not None:
            return self.loss_fn(output, target)
        return nn.functional.cross_entropy(self.scored(output), target)

    def calibration_batches(self, count: int = 8) -> Iterator[Any]:
        """Up to ``count`` input batches (targets dropped) for calibration, on ``self.device``.

        Taken from ``train_data``, else ``eval_data``, else the example inputs (one batch).
        """
        data = self.train_data if self.train_data is not None else self.eval_data
        if data is None:
            if self.example_inputs:
                yield to_device(self.example_inputs, self.device)
            return
        for batch in iterate(data, "train_data", limit=count):
            inputs, _ = split_batch(batch)
            yield to_device(inputs, self.device)

    def forward(self, model: nn.Module, inputs: Any, where: str | None = None) -> Any:
        """Run ``model`` on ``inputs`` (tensor, tuple or dict) on the context's device.

        When the model fails on inputs whose shape or dtype differ from the example inputs, the
        failure becomes a :class:`~torchslim.DataError` naming both (``where`` names the batch).
        """
        moved = to_device(inputs, self.device)
        try:
            return call_model(model, moved)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            mismatch = describe_mismatch(moved, self.example_inputs)
            if mismatch is None:
                raise
            raise DataError(f"{where or 'a batch'}: {mismatch}; the model failed on it with "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU random generator seeded from the run seed (plus ``offset``)."""
        gen = torch.Generator()
        gen.manual_seed(self.seed + offset)
        return gen


def describe_mismatch(inputs: Any, example_inputs: tuple) -> str | None:
    """How ``inputs`` differ from ``example_inputs`` beyond the batch size, or None when they agree."""
    got, want = first_tensor(inputs), first_tensor(example_inputs)
    if got is None or want is None:
        return None
    if tuple(got.shape[1:]) == tuple(want.shape[1:]) and got.dtype == want.dtype:
        return None
    return (f"inputs have shape {tuple(got.shape)} and dtype {str(got.dtype).replace('torch.', '')}, but the "
            f"example inputs have shape {tuple(want.shape)} and dtype {str(want.dtype).replace('torch.', '')} "
            f"(only the first, batch, dimension may differ)")
