"""The ``magnitude`` plugin object: a few lines that hand a recipe step to :func:`prune`."""

from __future__ import annotations

from typing import Any

from torch import nn

import torchslim
from torchslim.context import RunContext

from .options import MagnitudeOptions
from .pipeline import prune
from .tensors import DEFAULT_TYPES


class MagnitudePruning:
    """The ``magnitude`` compress method (see the module docstring)."""

    name = "magnitude"
    Options = MagnitudeOptions
    default_types = DEFAULT_TYPES

    @torchslim.hookimpl
    def compress(self, model: nn.Module, step: Any, context: RunContext) -> torchslim.StepResult:
        return prune(model, step.options, targets=step.targets, context=context)
