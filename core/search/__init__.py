"""Automatic strategy search (the recipe's ``search:`` block): meet a target at the least predicted loss.

Not to be confused with *strategies*, which are named recipes registered by plugins. The package:
:mod:`.searcher` (the loop: sensitivity, allocation, fine-tuning, back-off), :mod:`.knobs` (strength
knobs and grids), :mod:`.allocation` (the knapsack), :mod:`.cache` (sensitivities on disk) and
:mod:`.plots`.
"""

from __future__ import annotations

from .allocation import allocate
from .cache import SensitivityCache
from .knobs import Knob, default_grid, strength_field, strength_knob
from .plots import write_plots
from .searcher import Searcher

__all__ = ["Knob", "Searcher", "SensitivityCache", "allocate", "default_grid", "strength_field", "strength_knob",
           "write_plots"]
