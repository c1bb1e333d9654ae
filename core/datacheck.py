"""Checks that a classification batch fits the model, with errors that say what was expected.

Used by the ``accuracy`` evaluator and the ``sgd`` fine-tuner so that a wrong label, dtype or batch
size fails at the first bad batch with a :class:`~torchslim.DataError` instead of a CUDA assert or
a silently wrong metric.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import DataError

#: Targets equal to this are ignored, as in :func:`torch.nn.functional.cross_entropy`.
IGNORE_INDEX = -100


def logits_of(output: Any, where: str) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``output["logits"]`` or ``output.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    raise DataError(
        f"{where}: the model returned {type(output).__name__}; classification needs a logits tensor "
        f"(N, classes), a dict with 'logits', or an object with .logits; pass metric_fn=/loss_fn= for "
        f"other outputs"
    )


def check_classification_batch(output: torch.Tensor, target: Any, where: str, *, allow_soft: bool = False) -> None:
    """Raise :class:`DataError` unless ``target`` holds class indices (or probabilities) for ``output``.

    ``output`` is ``(N, C)`` or ``(N, C, d1, ...)`` logits; ``target`` must then be integer class
    indices of shape ``(N,)`` / ``(N, d1, ...)`` in ``[0, C)`` (``-100`` marks ignored positions, as
    in cross-entropy). With ``allow_soft``, a floating ``target`` of the same shape as ``output``
    (class probabilities) is accepted too. ``where`` names the batch in the message.
    """
    if target is None:
        raise DataError(
            f"{where} has no target; batches must be (inputs, target) pairs or dicts with a 'labels' key"
        )
    if not isinstance(target, torch.Tensor):
        raise DataError(f"{where}: target must be a tensor of class indices, got {type(target).__name__}")
    if not output.is_floating_point() or output.dim() < 2:
        raise DataError(
            f"{where}: the model output has shape {tuple(output.shape)} and dtype {output.dtype}; "
            f"expected floating logits of shape (N, classes)"
        )
    batch, classes = output.shape[0], output.shape[1]
    if batch == 0:
        raise DataError(f"{where} is empty (0 samples); drop empty batches from the loader")
    if target.dim() == 0 or target.shape[0] != batch:
        got = "a scalar" if target.dim() == 0 else f"{target.shape[0]} target(s)"
        raise DataError(
            f"{where}: the model produced {batch} output row(s) but the batch has {got}; "
            f"inputs and targets of a batch must have the same first dimension"
        )
    if allow_soft and target.is_floating_point() and target.shape == output.shape:
        return
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        soft = " or class probabilities of the output's shape" if allow_soft else ""
        raise DataError(
            f"{where}: targets have dtype {target.dtype}; expected integer class indices (torch.int64){soft}; "
            f"convert them with target.long()"
        )
    expected = (batch, *output.shape[2:])
    if tuple(target.shape) != expected:
        raise DataError(
            f"{where}: targets have shape {tuple(target.shape)}; for outputs of shape {tuple(output.shape)} "
            f"expected class indices of shape {expected}"
        )
    labels = target[target != IGNORE_INDEX]
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise DataError(
                f"{where}: label {bad} is out of range; the model outputs {classes} classes, so labels must "
                f"be in 0..{classes - 1} (or {IGNORE_INDEX} to ignore a position)"
            )
