"""The :class:`RunContext` handed to every hook."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .batches import call_model, iterate, split_batch, to_device

LossFn = Callable[[Any, Any], torch.Tensor]
MetricFn = Callable[[nn.Module, Iterable], float]


@dataclass
class RunContext:
    """What a plugin may use besides the model and its step.

    Attributes:
        train_data: iterable of training batches (``(inputs, target)`` by default), or None.
        eval_data: iterable of evaluation batches, or None.
        example_inputs: a tuple of positional inputs for one forward pass (shape probes, MACs, latency).
        original_model: the untouched input model in eval mode with gradients off (teacher, calibration).
            It is a copy: plugins must not change it.
        loss_fn: ``loss_fn(output, target) -> scalar``; cross-entropy when the user gave none.
        metric_fn: the user's ``metric_fn(model, eval_data) -> float``, replacing top-1 accuracy.
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
    example_inputs: tuple = ()
    original_model: nn.Module | None = None
    loss_fn: LossFn | None = None
    metric_fn: MetricFn | None = None
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

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The task loss: the user's ``loss_fn`` or cross-entropy on logits."""
        if self.loss_fn is not None:
            return self.loss_fn(output, target)
        if isinstance(output, dict) and "logits" in output:
            output = output["logits"]
        return nn.functional.cross_entropy(output, target)

    def calibration_batches(self, count: int = 8) -> Iterator[Any]:
        """Up to ``count`` input batches (targets dropped) for calibration, on ``self.device``.

        Taken from ``train_data``, else ``eval_data``, else the example inputs (one batch).
        """
        data = self.train_data if self.train_data is not None else self.eval_data
        if data is None:
            if self.example_inputs:
                yield to_device(tuple(self.example_inputs), self.device)
            return
        for batch in iterate(data, "train_data", limit=count):
            inputs, _ = split_batch(batch)
            yield to_device(inputs, self.device)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run ``model`` on ``inputs`` (tensor, tuple or dict) on the context's device."""
        return call_model(model, to_device(inputs, self.device))

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU random generator seeded from the run seed (plus ``offset``)."""
        gen = torch.Generator()
        gen.manual_seed(self.seed + offset)
        return gen
