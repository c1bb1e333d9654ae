"""Sequential calibration: run the calibration batches through a model's repeated blocks, one at a time.

Transformers (and most deep networks) are a stem, a list of identical blocks run one after the other,
and a head. SparseGPT-style sequential calibration compresses block ``i`` on the activations that the
already compressed blocks ``0 .. i-1`` produce. :class:`BlockStream` does the running: it captures
what the first block receives for every calibration batch (the hidden states plus the other
arguments, such as the attention mask), then runs one block at a time over those stored inputs and,
when asked, replaces them by the block's outputs. Its memory is the model plus one block's input
activations for the calibration set (``tokens x width`` floats), whatever the depth, and those only up
to ``$TORCHSLIM_CALIBRATION_MB`` (default 1024 MB): beyond it they go to a temporary folder
(:class:`~.spill.HiddenStore`). The cost is two passes of each block over the calibration set instead
of a forward pass per block group.

The block structure is found, not declared: :func:`find_blocks` takes the ``nn.ModuleList`` of two or
more blocks of one class holding the most parameters, and :meth:`BlockStream.open` checks on the
first batch that the model really runs them in order, each on the previous block's output, with the
same other arguments; it returns None otherwise (the caller then calibrates some other way).
Key-value caches are never kept: cache arguments become None and ``use_cache`` False.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..batches import call_model, first_tensor
from ..measure import eval_mode
from .spill import HiddenStore, memory_limit_bytes
from .tokens import token_mask

log = logging.getLogger("torchslim")


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """``(name, blocks)`` of the model's repeated blocks, or None when it has none.

    The blocks are the children of an ``nn.ModuleList`` with at least two children, all of one class
    and holding parameters; of several such lists, the one with the most parameters.
    """
    best: tuple[int, str, list[nn.Module]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2 or ".parametrizations" in f".{name}":
            continue
        children = list(module)
        if len({type(child) for child in children}) != 1:
            continue
        size = sum(p.numel() for child in children for p in child.parameters())
        if size and (best is None or size > best[0]):
            best = (size, name, children)
    return None if best is None else (best[1], best[2])


class _Stop(Exception):
    """Ends a forward pass once the first block's inputs are captured."""


def _is_cache(value: Any) -> bool:
    return any(cls.__name__.endswith("Cache") and cls.__module__.startswith("transformers")
               for cls in type(value).__mro__)


def _clean(args: tuple, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Block arguments with key-value caches dropped, so running a block twice never grows a cache."""
    args = [None if _is_cache(a) else a for a in args]
    kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def _same(a: Any, b: Any) -> bool:
    """True when two block arguments are the same value (tensors compared by content)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and (a is b or bool(torch.equal(a, b))))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return a is b


class BlockStream:
    """The calibration batches' activations at one depth of the model, advanced block by block.

    Build it with :meth:`open`. ``inputs[b]`` holds, for batch ``b``, the arguments of the next block
    to run with the hidden states left out (``None``), and ``hidden`` those hidden states; :meth:`run`
    runs a block over every batch (calling ``on_batch(token_mask)`` first, so statistics hooks know
    which rows are real tokens) and, with ``advance=True``, keeps its outputs as the next block's inputs.
    """

    def __init__(self, model: nn.Module, name: str, blocks: list[nn.Module],
                 inputs: list[tuple[list[Any], dict[str, Any]]], hidden: HiddenStore,
                 masks: list[torch.Tensor | None]) -> None:
        self.model, self.name, self.blocks = model, name, blocks
        self.inputs, self.hidden, self.masks = inputs, hidden, masks

    @classmethod
    def open(cls, model: nn.Module, batches: Iterable[Any], share: float = 1.0) -> "BlockStream | None":
        """Capture the first block's inputs for every batch; None when the model has no usable blocks.
        ``share`` is this stream's part of ``$TORCHSLIM_CALIBRATION_MB`` (streams open side by side split it)."""
        found = find_blocks(model)
        if found is None:
            return None
        name, blocks = found
        batches = list(batches)
        if not batches:
            return None
        why = _check_chain(model, blocks, batches[0])
        if why is not None:
            log.info("sequential calibration by blocks is off for %s: %s", name, why)
            return None
        inputs, masks, hidden = [], [], HiddenStore(memory_limit_bytes() * share)
        captured: list[tuple[tuple, dict]] = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append((args, kwargs))
            raise _Stop

        handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with eval_mode(model), torch.no_grad():
                for batch in batches:
                    try:
                        call_model(model, batch)
                    except _Stop:
                        pass
                    args, kwargs = _clean(*captured.pop())
                    hidden.append(_swap_hidden(args, kwargs, None))
                    inputs.append((args, kwargs))
                    masks.append(token_mask(batch))
        finally:
            handle.remove()
        return cls(model, name, blocks, inputs, hidden, masks)

    def inside(self, module: nn.Module) -> int | None:
        """The index of the block holding ``module``, or None when it is outside every block."""
        for index, block in enumerate(self.blocks):
            if any(m is module for m in block.modules()):
                return index
        return None

    def run(self, index: int, on_batch: Callable[[torch.Tensor | None], None] | None = None,
            advance: bool = False, block: nn.Module | None = None) -> None:
        """Run block ``index`` (or ``block`` in its place, e.g. a copy kept dense) over every batch (eval
        mode, no gradients); keep its outputs with ``advance``."""
        block = self.blocks[index] if block is None else block
        with eval_mode(self.model), eval_mode(block), torch.no_grad():
            for b in range(len(self.inputs)):
                if on_batch is not None:
                    on_batch(self.masks[b])
                args, kwargs = self.batch_inputs(b)
                out = block(*args, **kwargs)
                del args, kwargs
                if advance:
                    self.hidden.put(b, first_tensor(out))
                del out

    def batch_inputs(self, index: int) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` the next block takes for batch ``index``, hidden states included (copies of
        the containers: the stream's own stay without them)."""
        args, kwargs = list(self.inputs[index][0]), dict(self.inputs[index][1])
        _swap_hidden(args, kwargs, self.hidden.get(index))
        return args, kwargs

    def tokens(self) -> int:
        """Real tokens (rows) in the stream: what the statistics count."""
        total = 0
        for b, mask in enumerate(self.masks):
            total += int(mask.sum()) if mask is not None else self.hidden.get(b).shape[:-1].numel()
        return total


def _swap_hidden(args: list[Any], kwargs: dict[str, Any], value: torch.Tensor | None) -> torch.Tensor:
    """Put ``value`` where a block takes its hidden states (first argument, or ``hidden_states``) and
    return what was there."""
    if args:
        old, args[0] = args[0], value
    else:
        old, kwargs["hidden_states"] = kwargs.get("hidden_states"), value
    return old


def _check_chain(model: nn.Module, blocks: list[nn.Module], batch: Any) -> str | None:
    """Why the blocks cannot be run one at a time on stored inputs (None when they can)."""
    calls: list[tuple[int, list[Any], dict[str, Any], Any]] = []

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            clean_args, clean_kwargs = _clean(args, kwargs)
            calls.append((index, clean_args, clean_kwargs, first_tensor(output)))
        return hook

    handles = [block.register_forward_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if [c[0] for c in calls] != list(range(len(blocks))):
        return "its blocks do not run exactly once each, in order"
    first_args, first_kwargs = calls[0][1], calls[0][2]
    hidden0 = first_args[0] if first_args else first_kwargs.get("hidden_states")
    if not isinstance(hidden0, torch.Tensor):
        return "the first block's first argument is not a tensor"
    for (_, args, kwargs, _), (_, _, _, previous) in zip(calls[1:], calls[:-1]):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not (isinstance(hidden, torch.Tensor) and _same(hidden, previous)):
            return "a block does not receive the previous block's output"
        if not (_same(args[1:], first_args[1:]) and _same({k: v for k, v in kwargs.items() if k != "hidden_states"},
                                                          {k: v for k, v in first_kwargs.items() if k != "hidden_states"})):
            return "the blocks receive different arguments besides the hidden states"
    return None
