"""What every runtime plugin needs to build its artifact: the prepared model, its inputs, its spec."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import masks
from ..batches import as_inputs, split_batch, tensors_in
from ..errors import DataError
from ..measure import count_macs, count_nonzeros, count_params
from ..surgery import own_parametrized_classes
from .module import output_spec


def prepared(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with its pruning masks baked in; ``model`` is not touched."""
    replica = own_parametrized_classes(copy.deepcopy(model)).cpu()
    return masks.finalize(replica).eval()


def has_attention(model: nn.Module) -> bool:
    """True when ``model`` holds attention layers (``nn.MultiheadAttention`` or a class named ``*Attention``).

    Runtimes quantize such models differently: their activations include additive attention masks of
    ``-inf`` or the dtype's minimum, which wreck a calibrated activation range, and their accuracy rests
    on the softmax and normalization staying in float.
    """
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in model.modules())


def positional(example_inputs: Any, where: str) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` as a tuple of CPU tensors; keyword inputs are refused with the fix."""
    inputs = as_inputs(example_inputs)
    if isinstance(inputs, dict):
        raise DataError(f"{where}: runtimes take positional tensor inputs, got keyword inputs {sorted(inputs)}; "
                        f"pass example_inputs as a tuple of tensors")
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        kinds = [type(t).__name__ for t in inputs]
        raise DataError(f"{where}: needs example_inputs made of tensors (one batch), got {kinds or 'none'}")
    return tuple(t.detach().cpu() for t in inputs)


def spec_for(model: nn.Module, inputs: tuple[torch.Tensor, ...], **settings: Any) -> dict[str, Any]:
    """The :class:`RuntimeModule` spec: input count, output structure and the source model's counts."""
    with torch.no_grad():
        outputs = model(*inputs)
    counts = {"params": count_params(model), "nonzeros": count_nonzeros(model), "macs": count_macs(model, inputs)}
    return {"inputs": len(inputs), "outputs": output_spec(outputs), "counts": counts, **settings}


def reference_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The model's flat output tensors on ``inputs`` (what the artifact is checked against)."""
    with torch.no_grad():
        return [t.detach().cpu() for t in tensors_in(model(*inputs))]


def calibration_inputs(context: Any, count: int, where: str) -> list[tuple[torch.Tensor, ...]]:
    """Up to ``count`` input batches from ``train_data`` (else ``eval_data``, else the example inputs)."""
    data = context.train_data if context.train_data is not None else context.eval_data
    if data is None:
        return [positional(context.example_inputs, where)]
    batches = []
    for batch in data:
        if len(batches) >= count:
            break
        inputs, _ = split_batch(batch)
        batches.append(positional(inputs, where))
    if not batches:
        raise DataError(f"{where}: train_data yielded no batches to calibrate int8 on; pass a non-empty DataLoader")
    return batches
