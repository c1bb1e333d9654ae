"""The ``channel`` plugin object: hands a recipe step to :func:`prune_channels`."""

from __future__ import annotations

from typing import Any

from torch import nn

import torchslim
from torchslim.targets import HFConv1D

from .graph import DEFAULT_TYPES
from .options import ChannelOptions
from .pipeline import prune_channels


class ChannelPruning:
    """Remove whole channels ranked by importance; coupled layers shrink with them (Torch-Pruning)."""

    name = "channel"
    Options = ChannelOptions
    default_types = (*DEFAULT_TYPES, HFConv1D)  # GPT-2's Conv1D projections, in transformer blocks
    needs = ("example_inputs",)  # one forward pass traces the coupled channels

    @torchslim.hookimpl
    def accelerate(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        return prune_channels(model, context.example_inputs, step.options, targets=step.targets,
                              context=context, where=f"accelerate/{step.method}")
