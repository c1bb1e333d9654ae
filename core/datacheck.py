"""Checks that a classification batch fits the model, with errors that say what was expected.

Used by the ``accuracy`` evaluator and the ``sgd`` fine-tuner so that a wrong label, dtype or batch
size fails at the first bad batch with a :class:`~torchslim.DataError` instead of a CUDA assert or
a silently wrong metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from .errors import DataError

#: Targets equal to this are ignored, as in :func:`torch.nn.functional.cross_entropy`.
IGNORE_INDEX = -100


def scored_output(output: Any, where: str, name: str | None = None,
                  fn: Callable[[Any], Any] | None = None) -> torch.Tensor:
    """The tensor of a model output that metrics and the default loss read.

    ``fn`` (``Engine.run(output_fn=...)``) wins; else ``name`` (the recipe's ``evaluation.output``, such as
    ``"logits"`` or ``"last_hidden_state"``) is looked up as a key (dicts, ``ModelOutput``) or an
    attribute; else the output itself when it is a tensor, its ``"logits"`` entry or ``.logits``, or,
    for a tuple or list, its first item.
    """
    if fn is not None:
        value = fn(output)
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{where}: output_fn returned {type(value).__name__}; it must return a tensor")
        return value
    if name is not None:
        if isinstance(output, Mapping) and name in output:
            value = output[name]
        elif not isinstance(output, (Mapping, torch.Tensor)) and hasattr(output, name):
            value = getattr(output, name)
        else:
            keys = list(output.keys()) if isinstance(output, Mapping) else type(output).__name__
            raise DataError(f"{where}: evaluation.output={name!r} is not in the model's output (it has {keys}); "
                            f"set evaluation.output to one of them, or pass output_fn=... to Engine.run")
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{where}: evaluation.output={name!r} is {type(value).__name__}, not a tensor")
        return value
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output:
        return scored_output(output[0], where)
    raise DataError(
        f"{where}: the model returned {type(output).__name__}; classification needs a logits tensor "
        f"(N, classes), a dict with 'logits', an object with .logits, or a tuple whose first item is one; "
        f"set evaluation.output (e.g. 'last_hidden_state') or pass output_fn=/metric_fn=/loss_fn= for other outputs"
    )


def logits_of(output: Any, where: str) -> torch.Tensor:
    """The logits tensor of a model output: the tensor itself, ``output["logits"]``, ``output.logits``, or
    the first item of a tuple (see :func:`scored_output`)."""
    return scored_output(output, where)


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
