"""Runtime artifacts: what a ``deploy`` step returns, how runtime plugins build it, and deploying by name.

:class:`RuntimeModule` is the callable a ``deploy`` step puts in ``result.model``: every evaluator
measures it (accuracy, latency, the artifact's size), :func:`torchslim.save` writes its files beside
the manifest, and :func:`torchslim.load` gives it back without a base model. :mod:`.building` holds
what runtime plugins share (the prepared model, calibration batches, the spec); :func:`deploy` builds
an artifact through any installed runtime plugin without a recipe (the search and svd's latency gate
time candidates with it).
"""

from __future__ import annotations

from .building import calibration_inputs, has_attention, positional, prepared, reference_outputs, spec_for
from .checking import checked_result, int8_warnings, relative_error
from .deploying import deploy, runtime_step, unavailable
from .module import COUNTS, RuntimeModule, is_artifact, output_spec

__all__ = ["COUNTS", "RuntimeModule", "calibration_inputs", "checked_result", "deploy", "has_attention", "int8_warnings",
           "is_artifact", "output_spec", "positional", "prepared", "reference_outputs", "relative_error", "runtime_step",
           "spec_for", "unavailable"]
