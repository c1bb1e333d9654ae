"""How torchslim reads a batch: ``(inputs, target)`` pairs, tuples of inputs, or dicts of inputs.

Model inputs are either positional (a tensor, or a tuple of them: ``model(*inputs)``) or keyword (a
mapping such as a tokenizer's ``BatchEncoding``: ``model(**inputs)``). :func:`as_inputs` puts any of
them in one of the two forms, and every part of torchslim calls models through :func:`call_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    if isinstance(batch, Mapping):
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
    """Call ``model`` with ``inputs``: a tensor, a tuple of positional inputs, or a mapping of keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def to_device(value: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors inside tuples/lists/dicts, to ``device``."""
    if isinstance(value, (torch.Tensor, nn.utils.rnn.PackedSequence)):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) input or output, in order: tensors, dicts (``ModelOutput`` too), tuples,
    lists, and objects with ``to_tuple()``."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors_in(item)
    elif callable(getattr(value, "to_tuple", None)):
        yield from tensors_in(value.to_tuple())


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor found in a (nested) input, or None."""
    return next(tensors_in(value), None)


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


def as_inputs(value: Any) -> tuple | dict:
    """Model inputs in one of the two forms: a tuple of positional inputs, or a dict of keyword inputs.

    A tensor becomes a 1-tuple, a list a tuple, and a mapping (a dict, a tokenizer's ``BatchEncoding``)
    a plain dict, so ``call_model`` passes its entries as keywords rather than the mapping positionally.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,)


def has_inputs(value: Any) -> bool:
    """True when ``value`` holds model inputs (not None, not an empty tuple or mapping)."""
    if value is None:
        return False
    if isinstance(value, (tuple, list, Mapping)):
        return len(value) > 0
    return True


def example_inputs_from(example_inputs: Any, *loaders: Iterable | None) -> tuple | dict:
    """``example_inputs`` in :func:`as_inputs` form, or the inputs of the first batch of the first loader.

    Returns ``()`` when there is neither.
    """
    if example_inputs is not None:
        return as_inputs(example_inputs)
    for loader in loaders:
        if loader is None:
            continue
        for batch in loader:
            inputs, _ = split_batch(batch)
            return as_inputs(inputs)
    return ()


def describe_inputs(inputs: Any) -> str:
    """``(1, 1, 8, 8) float32`` or ``{input_ids: (4, 16) int64, ...}``: what a measurement ran on."""
    if isinstance(inputs, torch.Tensor):
        return f"{tuple(inputs.shape)} {str(inputs.dtype).removeprefix('torch.')}"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def float_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (tensor, tuple, list or dict), flattened and detached."""
    return [tensor.detach().float() for tensor in tensors_in(output) if tensor.is_floating_point()]
