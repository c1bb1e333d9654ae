"""What every runtime plugin ends its ``deploy`` step with: the artifact checked against the model on the
example inputs (relative output error, a limit for fp32, a warning for int8 far off), and the step's report."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import StepError
from ..results import StepResult
from .building import reference_outputs
from .module import RuntimeModule

#: The relative output error an fp32 artifact may show on the example inputs (rounding and fused kernels).
FP32_MAX_ERROR = 1e-3
#: Above this relative output error an int8 artifact gets a warning (int8 models that keep their
#: accuracy stay within a few percent; tens of percent means the quantization went wrong).
INT8_WARN_ERROR = 0.1


def relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """``max over outputs of ||a - b|| / ||b||`` (0 for outputs that are all zero and match)."""
    worst = 0.0
    for a, b in zip(got, expected):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if a.shape != b.shape:
            return float("inf")
        scale = float(b.norm())
        diff = float((a - b).norm())
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def checked_result(artifact: RuntimeModule, model: nn.Module, inputs: tuple[torch.Tensor, ...], options: Any,
                   method: str) -> StepResult:
    """The step's result: ``artifact`` checked against ``model`` on ``inputs``, with its error and size.

    Raises :class:`~torchslim.StepError` when the artifact's outputs differ from the model's by more than
    ``options.max_error`` (default: :data:`FP32_MAX_ERROR` for fp32, no limit for int8).
    """
    expected = reference_outputs(model, inputs)
    got = reference_outputs(artifact, inputs)
    if len(got) != len(expected):
        raise StepError(f"deploy/{method}: the artifact returns {len(got)} outputs, the model "
                                  f"{len(expected)}")
    error = relative_error(got, expected)
    precision = getattr(options, "precision", "fp32")
    limit = getattr(options, "max_error", None)
    if limit is None and precision == "fp32":
        limit = FP32_MAX_ERROR
    if limit is not None and not error <= limit:
        raise StepError(
            f"deploy/{method}: the {precision} artifact's outputs differ from the model's by {error:.3g} (relative "
            f"to their norm) on the example inputs, more than max_error={limit}; raise max_error, or use fp32 "
            f"for an artifact that matches")
    size = sum(len(data) for data in artifact.files.values())
    row = {"runtime": method, "precision": precision, "artifact_bytes": size, "output_error": error}
    return StepResult(model=artifact, report=[row], info=dict(row),
                                warnings=int8_warnings(method, precision, error))


def int8_warnings(method: str, precision: str, error: float) -> list[str]:
    """A warning when an int8 artifact's relative output error says the quantization went wrong."""
    if precision != "int8" or error <= INT8_WARN_ERROR:
        return []
    return [f"deploy/{method}: the int8 artifact's outputs differ from the model's by {error:.2g} (relative to "
            f"their norm) on the example inputs; check its accuracy before shipping it, or deploy fp32 "
            f"(set max_error to make this an error)"]
