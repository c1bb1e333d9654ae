"""Input statistics of the layers being pruned, gathered by forward pre-hooks on calibration batches.

For each hooked layer we keep the squared L2 norm of every input feature over all calibration rows
(Wanda's activation scale) and, when reconstruction is asked, the input Gram matrix ``H = X^T X`` in the
layout of the weight's columns (``F.unfold`` order ``(channel, kh, kw)`` for convolutions).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import call_model
from torchslim.errors import DataError

#: Layers whose inputs we can turn into weight-column statistics.
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class InputStats:
    """Per-layer input statistics: ``sumsq`` per input channel/feature, optional ``gram``, row count."""

    sumsq: torch.Tensor
    gram: torch.Tensor | None
    rows: int = 0

    def column_norms(self) -> torch.Tensor:
        """L2 norm of each weight column's input (per feature, or per (channel, kernel pos.) with a Gram)."""
        if self.gram is not None:
            return self.gram.diagonal().clamp_min(0).sqrt()
        return self.sumsq.sqrt()


def gram_supported(module: nn.Module) -> bool:
    """True when the input Gram matrix of ``module`` matches its weight columns (no grouped conv)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def _conv_columns(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Input patches as rows ``[N * L, C * prod(kernel)]``, in the weight's column order."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
        padding = module.padding if isinstance(module.padding, str) else (0, *module.padding)
    else:
        kernel, stride, dilation, padding = module.kernel_size, module.stride, module.dilation, module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * len(kernel)
        else:  # "same": stride is 1 by PyTorch's rule; pad like the conv does (extra on the right)
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pads: list[int] = []
            for t in reversed(total):
                pads += [t // 2, t - t // 2]
            x = F.pad(x, pads)
            padding = (0,) * len(kernel)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # N x C*k x L
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass
class Trace:
    """What one calibration forward pass showed about the hooked layers.

    ``order``: module ids in the order they were first called; ``group``: per module id, the index of
    its run of consecutive layers fed the very same input tensor (attention's q/k/v projections);
    ``calls``: how often each module ran in the first batch.
    """

    order: list[int] = field(default_factory=list)
    group: dict[int, int] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    refs: dict[int, Any] = field(default_factory=dict, repr=False)

    def see(self, key: int, x: torch.Tensor) -> None:
        """Record the first call of module ``key`` with input ``x``."""
        if key in self.calls:
            self.calls[key] += 1
            return
        previous = self.order[-1] if self.order else None
        # a weak reference, so an input freed and a new one allocated at its address never match
        same = previous is not None and self.refs[previous]() is x
        self.group[key] = self.group[previous] if same else len(set(self.group.values()))
        self.order.append(key)
        self.refs[key] = weakref.ref(x)
        self.calls[key] = 1


class _StopForward(Exception):
    """Raised by a hook to end a calibration forward pass once the layers of interest have run."""


class _Recorder:
    def __init__(self, module: nn.Module, gram: bool, trace: Trace) -> None:
        self.module = module
        self.want_gram = gram and gram_supported(module)
        self.stats: InputStats | None = None
        self.trace = trace
        self.batch = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        if self.batch == 0:
            self.trace.see(id(module), args[0])
        x = args[0].detach()
        if isinstance(module, nn.Linear):
            flat = x.reshape(-1, x.shape[-1]).float()
            sumsq = flat.pow(2).sum(0)
        else:  # conv: channels at dim 1 (batched) or dim 0 (unbatched)
            if x.dim() == module.weight.dim() - 1:
                x = x.unsqueeze(0)
            dims = [d for d in range(x.dim()) if d != 1]
            sumsq = x.float().pow(2).sum(dims)
            flat = _conv_columns(module, x.float()) if self.want_gram else None
        gram = flat.T @ flat if self.want_gram else None
        if self.stats is None:
            self.stats = InputStats(sumsq=sumsq, gram=gram, rows=flat.shape[0] if flat is not None else 0)
        else:
            self.stats.sumsq += sumsq
            if gram is not None:
                self.stats.gram += gram
            self.stats.rows += flat.shape[0] if flat is not None else 0


class _Stopper:
    """Forward hook that ends the pass once every watched module has run ``expected`` times."""

    def __init__(self, expected: dict[int, int]) -> None:
        self.expected = expected
        self.seen: dict[int, int] = {}

    def reset(self) -> None:
        self.seen = {}

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.seen[id(module)] = self.seen.get(id(module), 0) + 1
        if all(self.seen.get(k, 0) >= n for k, n in self.expected.items()):
            raise _StopForward


def collect_input_stats(
    model: nn.Module,
    modules: Sequence[nn.Module],
    batches: Iterable[Any],
    *,
    gram: bool = False,
    stop_after: dict[int, int] | None = None,
) -> tuple[dict[int, InputStats], Trace]:
    """Run ``model`` on ``batches`` (inputs only); return ``({id(module): InputStats}, Trace)``.

    Only modules of :data:`SUPPORTED` types are hooked; a module never called in the forward pass is
    absent from the result. ``stop_after`` (``{id(module): calls per batch}``) ends each forward pass
    as soon as those modules have run, skipping the rest of the model. The model runs in eval mode
    without gradients; its mode is restored.
    """
    trace = Trace()
    recorders = {id(m): _Recorder(m, gram, trace) for m in modules if isinstance(m, SUPPORTED)}
    unique = {id(m): m for m in modules if id(m) in recorders}
    handles = [m.register_forward_pre_hook(recorders[key]) for key, m in unique.items()]
    stopper = _Stopper(stop_after) if stop_after else None
    if stopper is not None:
        handles += [m.register_forward_hook(stopper) for key, m in unique.items() if key in stop_after]
    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for inputs in batches:
                if stopper is not None:
                    stopper.reset()
                try:
                    call_model(model, inputs)
                except _StopForward:
                    pass
                count += 1
                for rec in recorders.values():
                    rec.batch = count
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise DataError(
            "criterion 'activation' and reconstruct need calibration batches, but none were available; "
            "pass train_data (or example_inputs) to Engine.run"
        )
    return {key: rec.stats for key, rec in recorders.items() if rec.stats is not None}, trace


def merge_stats(stats: Sequence[InputStats]) -> InputStats | None:
    """Sum statistics of several holders of one tied tensor (None when there are none)."""
    stats = [s for s in stats if s is not None]
    if not stats:
        return None
    total = InputStats(stats[0].sumsq.clone(), None if stats[0].gram is None else stats[0].gram.clone(),
                       stats[0].rows)
    for other in stats[1:]:
        if other.sumsq.shape != total.sumsq.shape:
            continue
        total.sumsq += other.sumsq
        total.rows += other.rows
        if total.gram is not None and other.gram is not None and other.gram.shape == total.gram.shape:
            total.gram += other.gram
    return total
