"""Built-in fine-tuning: method ``sgd`` (SGD or AdamW, epochs or steps, cosine or constant schedule).

A few lines over the shared loop :func:`torchslim.training.fit`, with the task loss (the user's
``loss_fn`` or cross-entropy on the logits). Recipe::

    - finetune: {method: sgd, epochs: 3, lr: 0.01}
"""

from __future__ import annotations

from typing import Any

from torch import nn

import torchslim
from torchslim.training import TrainingOptions, fit, lr_factor

__all__ = ["SGDFinetune", "lr_factor"]


class SGDFinetune:
    """Fine-tune with SGD (momentum) or AdamW on ``context.train_data`` to recover accuracy.

    The loss is the user's ``loss_fn(output, target)``, or cross-entropy on the logits (with
    ``label_smoothing``). Seeded from the run seed: two runs on CPU give bit-identical weights.
    """

    name = "sgd"
    Options = TrainingOptions

    @torchslim.hookimpl
    def finetune(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        return torchslim.StepResult(model=model, info=fit(model, context, step.options, f"finetune/{step.method}"))

    def train_longer(self, options: TrainingOptions, factor: float) -> TrainingOptions:
        """The same options, training about ``factor`` times as long (the search's back-off)."""
        return options.longer(factor)
