"""The ``svd`` plugin object: hands a recipe step to :func:`decompose` and registers the factor modules."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

import torchslim

from .modules import MODULE_KINDS
from .options import SVDOptions
from .pipeline import DEFAULT_TYPES, decompose


class SVDDecomposition:
    """Factorize Linear/Conv layers by (data-aware) truncated SVD; keep only factors that run faster.

    Forms: ``weight`` (a KxK conv with r filters, then 1x1), ``spatial`` (Kx1 then 1xK, Jaderberg et
    al. 2014) and ``linear`` (two Linears). Ranks come from one of ``rank``, ``rank_ratio``,
    ``energy`` or ``mac_ratio``; the last spreads a MAC budget over the layers, cutting first where
    the least (normalized) output energy is lost per MAC saved. ``data_aware`` chooses the factors
    that minimise each layer's output error on calibration activations (SVD-LLM whitening) rather
    than the weight error. Grouped convs are factorized per group; depthwise convs and layers whose
    factors would not save MACs are left alone and listed in ``skipped``.
    """

    name = "svd"
    Options = SVDOptions
    default_types = DEFAULT_TYPES
    needs = ("example_inputs",)  # each layer is sized on its real input shape

    @torchslim.hookimpl
    def accelerate(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: SVDOptions = step.options
        calibration: Iterable[Any] = ()
        if opts.data_aware:
            calibration = context.calibration_batches(opts.calibration_batches)
        return decompose(model, context.example_inputs, opts, targets=step.targets,
                         calibration=calibration, where=f"step {context.step_index} ({step.label})")

    @torchslim.hookimpl
    def register_module_kinds(self, register: Callable[..., None]) -> None:
        for cls in MODULE_KINDS:
            # manifests written by torchslim 0.1 name the classes by their old home, torchslim.lowrank
            register(cls, aliases=(f"torchslim.lowrank.{cls.__qualname__}",))

    def decompose(self, model: nn.Module, example_inputs: Any, options: SVDOptions | dict | None = None,
                  **kwargs: Any) -> torchslim.StepResult:
        """Deprecated spelling of :func:`torchslim.plugins.svd.decompose`, kept for 0.1 callers."""
        return decompose(model, example_inputs, options, **kwargs)
