"""The model's interface on the example inputs: the structure, shapes and dtypes of its outputs.

The engine records it before the first step and compares after every step, so a method that changes
what the model returns (4 classes become 3, a tuple becomes a tensor) fails at its own step, naming
the plugin, instead of surfacing later as a confusing data or evaluation error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..batches import call_model, has_inputs, to_device
from ..measure import eval_mode


def signature(value: Any) -> Any:
    """A comparable description of a (nested) output: tensors by shape and dtype, containers by layout."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, Mapping):  # transformers' ModelOutput too
        return ("dict", tuple((key, signature(item)) for key, item in value.items()))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(signature(item) for item in value))
    if callable(getattr(value, "to_tuple", None)):
        return signature(value.to_tuple())
    return (type(value).__name__,)


def interface_of(model: nn.Module, example_inputs: Any, device: torch.device) -> Any | None:
    """The output signature of ``model`` on ``example_inputs``, or None when there are no example inputs."""
    if not has_inputs(example_inputs):
        return None
    with eval_mode(model), torch.no_grad():
        return signature(call_model(model, to_device(example_inputs, device)))


def describe(value: Any) -> str:
    """A short human form of a signature: ``tensor 8x10 float32``, ``(tensor ..., tensor ...)``."""
    kind = value[0]
    if kind == "tensor":
        return f"tensor {'x'.join(map(str, value[1])) or 'scalar'} {value[2]}"
    if kind == "dict":
        return "{" + ", ".join(f"{key}: {describe(item)}" for key, item in value[1]) + "}"
    if kind in ("tuple", "list"):
        inner = ", ".join(describe(item) for item in value[1])
        return f"({inner})" if kind == "tuple" else f"[{inner}]"
    return kind


def first_difference(before: Any, after: Any, path: str = "output") -> str | None:
    """Where ``after`` first differs from ``before`` (``output[0]: tensor 8x4 float32 -> tensor 8x3 ...``)."""
    if before == after:
        return None
    if before[0] == after[0] and before[0] in ("tuple", "list", "dict") and len(before[1]) == len(after[1]):
        for index, (old, new) in enumerate(zip(before[1], after[1])):
            if before[0] == "dict":
                if old[0] != new[0]:
                    break
                key, old, new = old[0], old[1], new[1]
                found = first_difference(old, new, f"{path}[{key!r}]")
            else:
                found = first_difference(old, new, f"{path}[{index}]")
            if found:
                return found
    return f"{path}: {describe(before)} -> {describe(after)}"
