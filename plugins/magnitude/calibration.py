"""Input statistics of the layers being pruned, gathered by forward pre-hooks on calibration batches.

For each hooked layer we keep the squared L2 norm of every input feature over all calibration rows
(Wanda's activation scale) and, when reconstruction is asked, the input Gram matrix ``H = X^T X`` in the
layout of the weight's columns (``F.unfold`` order ``(channel, kh, kw)`` for convolutions).

Rows are real tokens only: with keyword batches carrying an ``attention_mask``, padding positions
never enter a statistic (:func:`torchslim.calibration.feature_rows`). Statistics are summed batch by
batch in float64, so their memory is ``O(features^2)`` whatever the number of calibration tokens, and
under torchrun each rank sums its share of the batches before :func:`sum_stats` adds them up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.batches import call_model
from torchslim.calibration import PairedStats, feature_rows, sum_over_ranks, token_mask
from torchslim.errors import DataError
from torchslim.targets import HFConv1D, is_transposed_linear

#: Layers whose inputs we can turn into weight-column statistics (HFConv1D: transformers' Conv1D).
SUPPORTED = (nn.Linear, HFConv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


@dataclass
class InputStats:
    """Per-layer input statistics: ``sumsq`` per input channel/feature, optional ``gram``, row count, and
    with a dense stream beside the pruned one (``match``), the :class:`PairedStats` of the reconstruction
    target."""

    sumsq: torch.Tensor
    gram: torch.Tensor | None
    rows: int = 0
    paired: PairedStats | None = None

    def add(self, other: "InputStats") -> None:
        """Add another batch's (or holder's) statistics of the same layout."""
        self.sumsq += other.sumsq
        if self.gram is not None and other.gram is not None:
            self.gram += other.gram
        self.rows += other.rows

    def column_norms(self) -> torch.Tensor:
        """L2 norm of each weight column's input (per feature, or per (channel, kernel pos.) with a Gram)."""
        if self.gram is not None:
            return self.gram.diagonal().clamp_min(0).sqrt()
        return self.sumsq.sqrt()


def gram_supported(module: nn.Module) -> bool:
    """True when the input Gram matrix of ``module`` matches its weight columns (no grouped conv)."""
    if _linear_like(module):
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
        self.mask: torch.Tensor | None = None  # real tokens of the batch running now

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        if self.batch == 0:
            self.trace.see(id(module), args[0])
        x = args[0].detach()
        if _linear_like(module):
            flat = feature_rows(x, self.mask).float()
            sumsq = flat.pow(2).sum(0)
        else:  # conv: channels at dim 1 (batched) or dim 0 (unbatched)
            if x.dim() == module.weight.dim() - 1:
                x = x.unsqueeze(0)
            dims = [d for d in range(x.dim()) if d != 1]
            sumsq = x.float().pow(2).sum(dims)
            flat = _conv_columns(module, x.float()) if self.want_gram else None
        # each batch's product in float32, the running sums in float64: exact enough at any token count
        gram = (flat.T @ flat).double() if self.want_gram else None
        batch = InputStats(sumsq=sumsq.double(), gram=gram, rows=flat.shape[0] if flat is not None else 0)
        if self.stats is None:
            self.stats = batch
        else:
            self.stats.add(batch)


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


class StatsHooks:
    """Forward pre-hooks summing the input statistics of ``modules`` while the caller runs batches.

    Use as a context manager; call :meth:`next_batch` with each batch's token mask (None for none)
    before running it. :attr:`stats` maps ``id(module)`` to its :class:`InputStats` (a module that
    never ran is absent) and :attr:`trace` tells the order and input sharing of the first batch.
    """

    def __init__(self, modules: Sequence[nn.Module], gram: bool) -> None:
        self.trace = Trace()
        self.recorders = {id(m): _Recorder(m, gram, self.trace) for m in modules if isinstance(m, SUPPORTED)}
        self.modules = {id(m): m for m in modules if id(m) in self.recorders}
        self.handles: list[Any] = []
        self.batches = 0

    def __enter__(self) -> "StatsHooks":
        self.handles = [m.register_forward_pre_hook(self.recorders[key]) for key, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def next_batch(self, mask: torch.Tensor | None) -> None:
        """Tell the hooks a new batch starts, with its real-token mask."""
        for rec in self.recorders.values():
            rec.mask = mask
            rec.batch = self.batches
        self.batches += 1

    @property
    def stats(self) -> dict[int, InputStats]:
        return {key: rec.stats for key, rec in self.recorders.items() if rec.stats is not None}


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
    hooks = StatsHooks(modules, gram)
    stopper = _Stopper(stop_after) if stop_after else None
    extra = [m.register_forward_hook(stopper) for key, m in hooks.modules.items()
             if stopper is not None and key in stop_after]
    was_training = model.training
    model.eval()
    try:
        with hooks, torch.no_grad():
            for inputs in batches:
                hooks.next_batch(token_mask(inputs))
                if stopper is not None:
                    stopper.reset()
                try:
                    call_model(model, inputs)
                except _StopForward:
                    pass
    finally:
        for handle in extra:
            handle.remove()
        model.train(was_training)
    if hooks.batches == 0:
        raise DataError(
            "criterion 'activation' and reconstruct need calibration batches, but none were available; "
            "pass train_data (or example_inputs) to Engine.run"
        )
    return hooks.stats, hooks.trace


def sum_stats(stats: dict[int, InputStats], modules: Sequence[nn.Module]) -> None:
    """Sum every rank's statistics of ``modules`` (in that order, the same on every rank), in place.

    Every rank must have seen the same modules run; otherwise every rank raises the same error.
    """
    hooked = [m for m in dict.fromkeys(modules) if isinstance(m, SUPPORTED)]
    seen = torch.tensor([float(id(m) in stats) for m in hooked], dtype=torch.float64)
    ranks = torch.ones(1, dtype=torch.float64)
    sum_over_ranks([seen, ranks])
    partial = [type(m).__name__ for m, count in zip(hooked, seen.tolist()) if 0 < count < float(ranks)]
    if partial:
        raise DataError(f"{len(partial)} layer(s) ({partial[0]}, ...) ran on some ranks' calibration batches "
                        f"but not on others'; give every rank batches that run the same layers")
    for module in hooked:
        entry = stats.get(id(module))
        if entry is None:
            continue
        rows = torch.tensor([float(entry.rows)], dtype=torch.float64)
        sum_over_ranks([entry.sumsq, entry.gram, rows])
        entry.rows = int(rows)


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
        total.add(other)
    return total
