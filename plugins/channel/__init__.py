"""Built-in structured channel pruning: accelerate method ``channel``.

Whole output channels (conv filters, linear neurons, attention head dims) are ranked by an importance
criterion and removed for real: the model that comes out is a plain ``nn.Module`` whose standard
layers are smaller, so it runs faster on any dense hardware and saves/loads like any other model.
Every coupled tensor shrinks with the channel (the BatchNorm after it, the consumers' input columns,
both sides of residual additions, concatenations, grouped and depthwise convs, attention heads);
Torch-Pruning's dependency graph finds them. It is an optional extra: ``pip install 'torchslim[prune]'``.

Recipe::

    steps:
      - accelerate: {method: channel, ratio: 0.5, importance: l2, round_to: 8}
      - finetune:   {method: sgd, epochs: 3, lr: 0.01}

Python::

    from torchslim.plugins.channel import prune_channels
    result = prune_channels(model, (x,), {"mac_ratio": 0.5})

The package: :mod:`.options`, :mod:`.pipeline` (:func:`prune_channels`), :mod:`.graph` (Torch-Pruning's
dependency graph and what may be pruned), :mod:`.faults` (naming the module a trace failed in),
:mod:`.report` and :mod:`.plugin`.
"""

from __future__ import annotations

from .options import ChannelOptions
from .pipeline import prune_channels
from .plugin import ChannelPruning

__all__ = ["ChannelOptions", "ChannelPruning", "prune_channels"]
