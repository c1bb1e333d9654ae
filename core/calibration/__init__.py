"""Calibration passes shared by the data-aware methods (``magnitude``'s activation criterion and
reconstruction, ``svd``'s data-aware factors).

- :mod:`.tokens`: which rows of an activation are real tokens, so padding never enters a statistic;
- :mod:`.blocks`: a model's repeated blocks and :class:`BlockStream`, which runs calibration batches
  through them one block at a time, so a method can compress block ``i`` and calibrate block ``i + 1``
  on the compressed model's own activations while holding one block's activations;
- :mod:`.paired`: a dense and a compressed stream side by side, and the paired statistics that let a
  layer's reconstruction undo the drift of its inputs and of the residual stream around it;
- :mod:`.block_fit`: gradient steps that fit a compressed block's outputs to the dense block's along
  a paired walk, for what per-layer closed forms leave (the block's nonlinearities);
- :mod:`.random_tokens`: batches of random vocabulary tokens shaped like the real ones, so token
  models are also calibrated on directions their calibration text never excites;
- :mod:`.spill`: where the stream keeps each batch's hidden states: in memory up to a limit, then in a
  temporary folder, so more calibration tokens cost disk rather than memory;
- :mod:`.shares`: each rank's share of the calibration batches under torchrun and the sum of
  statistics over ranks, so calibration scales across processes as fine-tuning does.
"""

from __future__ import annotations

from .block_fit import block_output_error, fit_block_outputs
from .blocks import BlockStream, find_blocks
from .paired import PairedBlocks, PairedStats, layer_groups, paired_stats, sum_points
from .random_tokens import random_token_batches
from .shares import calibration_share, sum_over_ranks
from .tokens import feature_rows, token_mask

__all__ = ["BlockStream", "PairedBlocks", "PairedStats", "block_output_error", "calibration_share", "feature_rows",
           "find_blocks", "fit_block_outputs", "layer_groups", "paired_stats", "random_token_batches", "sum_over_ranks",
           "sum_points", "token_mask"]
