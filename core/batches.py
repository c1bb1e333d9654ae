"""How torchslim reads a batch: ``(inputs, target)`` pairs, tuples of inputs, or dicts of inputs."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .errors import DataError


def split_batch(batch: Any) -> tuple[Any, Any]:
    """Split a batch into ``(inputs, target)``; ``target`` is None when the batch has none.

    Accepted forms: ``(x, y)`` / ``[x, y]``; a lone tensor ``x``; a dict with the inputs as keyword
    arguments and an optional ``"labels"`` or ``"target"`` key.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "target")}
        return inputs, batch.get("labels", batch.get("target"))
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
    raise DataError(
        f"a batch must be (inputs, target), a tensor, or a dict of inputs; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with ``inputs``: a tensor, a tuple of positional inputs, or a dict of keywords."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def to_device(value: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors inside tuples/lists/dicts, to ``device``."""
    if isinstance(value, (torch.Tensor, nn.utils.rnn.PackedSequence)):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor found in a (nested) input, or None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size(inputs: Any) -> int:
    """The leading dimension of the first tensor of ``inputs`` (1 when none is found)."""
    tensor = first_tensor(inputs)
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() > 0 else 1


def iterate(data: Iterable | None, name: str, limit: int | None = None) -> Iterator[Any]:
    """Iterate a loader, raising :class:`DataError` (naming ``name``) when it yields nothing."""
    if data is None:
        raise DataError(f"{name} is required for this step but none was given; pass {name}=... to Engine.run")
    count = 0
    for batch in data:
        yield batch
        count += 1
        if limit is not None and count >= limit:
            return
    if count == 0:
        raise DataError(f"{name} yielded no batches; pass a non-empty DataLoader")


def example_inputs_from(example_inputs: Any, *loaders: Iterable | None) -> tuple:
    """``example_inputs`` as a tuple, or the inputs of the first batch of the first non-None loader."""
    if example_inputs is not None:
        return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    for loader in loaders:
        if loader is None:
            continue
        for batch in loader:
            inputs, _ = split_batch(batch)
            return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return ()


def float_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (tensor, tuple, list or dict), flattened and detached."""
    if isinstance(output, torch.Tensor):
        return [output.detach().float()] if output.is_floating_point() else []
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return [tensor for value in values for tensor in float_tensors(value)]
