"""Built-in ``magnitude`` pruning: zero the least important weights behind masks that survive training.

Importance is ``|w|`` (``criterion: weight``) or ``|w|`` times the L2 norm of the weight's input over
calibration batches (``criterion: activation``, Wanda; Sun et al. 2023). Weights are ranked per layer,
per output row, or globally, and removed one by one (unstructured), ``N`` of every ``M`` along the
input dimension (``pattern: "2:4"``), or as whole output rows/channels (``pattern: structured``).
``reconstruct: true`` then updates the kept weights by least squares on the calibration inputs
(SparseGPT's column-wise update; Frantar & Alistarh 2023). ``rounds > 1`` reaches the final sparsity
gradually on the cubic schedule of Zhu & Gupta (2017), fine-tuning with ``between`` after each round.

Masks are :mod:`torchslim.masks` parametrizations, so zeros hold through any later training;
:func:`torchslim.masks.finalize` bakes them in. Recipe step::

    - compress: {method: magnitude, sparsity: 0.9, scope: global, rounds: 4,
                 between: {method: sgd, epochs: 1}}

Python::

    from torchslim.plugins.magnitude import prune
    result = prune(model, sparsity=0.5, criterion="activation", calibration=[(x,)])

The package, one job per module: :mod:`.options` (settings), :mod:`.pipeline` (:func:`prune`),
:mod:`.rounds` (one pruning round), :mod:`.scores` (importance), :mod:`.keep` and :mod:`.select`
(keep-masks), :mod:`.calibration` (input statistics), :mod:`.reconstruct` (SparseGPT update),
:mod:`.tensors` (which tensors), :mod:`.plugin` (the plugin object).
"""

from __future__ import annotations

from .options import MagnitudeOptions
from .pipeline import cubic_schedule, prune
from .plugin import MagnitudePruning

__all__ = ["MagnitudeOptions", "MagnitudePruning", "cubic_schedule", "prune"]
