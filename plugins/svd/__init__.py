"""Built-in low-rank decomposition: method ``svd`` (stage ``accelerate``).

Replaces ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers by two smaller layers (the factor
modules of :mod:`.modules`) so fewer multiply-adds run, and checks that the cut turns into
wall-clock speed: with ``measure_latency`` every factorized layer is timed against the original on
its real input shape and the original is kept when the factors are not faster.

Recipe::

    steps:
      - accelerate: {method: svd, mac_ratio: 0.5, data_aware: true}

Python::

    from torchslim.plugins.svd import decompose
    result = decompose(model, (x,), {"mac_ratio": 0.5})

The package, one job per module: :mod:`.options` (settings), :mod:`.pipeline` (:func:`decompose`),
:mod:`.eligibility` (which layers, which forms), :mod:`.spectra` (SVD and factor weights),
:mod:`.calibration` (Gram matrices for data-aware factors), :mod:`.macs`, :mod:`.ranks` and
:mod:`.budget` (rank choice), :mod:`.sensitivity`, :mod:`.timing` (the latency gate), :mod:`.report`,
:mod:`.modules` (the factor modules) and :mod:`.plugin` (the plugin object).
"""

from __future__ import annotations

from .modules import MODULE_KINDS, ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d
from .options import SVDOptions
from .pipeline import decompose
from .plugin import SVDDecomposition

__all__ = ["ChannelLowRankConv", "LowRankLinear", "MODULE_KINDS", "SVDDecomposition", "SVDOptions",
           "SpatialLowRankConv2d", "decompose"]
