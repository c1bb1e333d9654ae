"""Importance scores: ``|w|`` or ``|w|`` times the input norm (Wanda), computed when read, never kept."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from torchslim.targets import HFConv1D

from . import select
from .calibration import InputStats, merge_stats
from .options import MagnitudeOptions
from .tensors import PrunableTensor


def score_targets(found: list[PrunableTensor], opts: MagnitudeOptions, stats: dict[int, InputStats],
            notes: dict[str, dict[str, Any]]) -> "Scores":
    scores = Scores(found, opts, stats)
    for target in found:
        notes[target.name] = {"criterion": scores.criteria[target.name], "reconstructed": False}
    return scores


class Scores(Mapping[str, torch.Tensor]):
    """The importance of every entry of each target, by name, computed when read and never kept.

    Scores come in ``[out, in, ...]`` layout (:meth:`PrunableTensor.matrix`), whatever the stored one.

    Global ranking reads every layer's scores a few times; recomputing ``|w|`` (times the cached
    per-column input norms of the activation criterion) is cheap, while keeping them all would cost
    the size of the weights again. ``criteria`` names the criterion each target actually gets.
    """

    def __init__(self, found: list[PrunableTensor], opts: MagnitudeOptions, stats: dict[int, InputStats]) -> None:
        self._targets = {t.name: t for t in found}
        self._stats = stats
        self._scales: dict[str, torch.Tensor | None] = {}
        self.criteria = {t.name: _criterion(t, opts, stats) for t in found}

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self._targets[name].matrix()
        return self._score(name, weight, weight)

    def _score(self, name: str, weight: torch.Tensor, rows: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scores of ``rows`` (``weight[start:start + len(rows)]``)."""
        score = rows.float().abs()
        if self.criteria[name] != "activation":
            return score
        if name not in self._scales:
            self._scales[name] = _input_scale(self._targets[name], weight, self._stats)
        scale = self._scales[name]
        return score * (scale if scale.shape[0] == 1 else scale[start:start + rows.shape[0]])

    def pieces(self, name: str) -> Iterator[torch.Tensor]:
        """The scores of ``name`` flat and in order, a block of output rows (about ``select.CHUNK``) at a time."""
        weight = self._targets[name].matrix()
        if weight.dim() == 0:
            yield self[name].reshape(-1)
            return
        step = max(1, select.CHUNK // max(1, weight[0].numel()))
        for start in range(0, weight.shape[0], step):
            yield self._score(name, weight, weight[start:start + step], start).reshape(-1)

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def reader(self, name: str) -> Callable[[], Iterator[torch.Tensor]]:
        """A zero-argument function yielding the scores of ``name`` afresh, piece by piece, on each call."""
        return lambda: self.pieces(name)


_GEMM_LAYERS = (nn.Linear, HFConv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _criterion(target: PrunableTensor, opts: MagnitudeOptions, stats: dict[int, InputStats]) -> str:
    """The criterion ``target`` is scored by: ``activation`` only with input statistics to use."""
    if opts.criterion != "activation" or target.is_bias:
        return "weight"
    seen = any(stats.get(id(m)) is not None for _, m, _ in target.holders)
    if not seen or target.param_name != "weight" or not isinstance(target.module, _GEMM_LAYERS):
        return "weight (no input statistics)"
    return "activation"


def _input_scale(target: PrunableTensor, weight: torch.Tensor, stats: dict[int, InputStats]) -> torch.Tensor:
    """Per-entry input norms broadcastable to ``weight``: the activation criterion is ``|w| * scale``."""
    merged = merge_stats([stats.get(id(m)) for _, m, _ in target.holders])
    module = target.module
    norms = merged.column_norms().to(weight.device)
    if isinstance(module, (nn.Linear, HFConv1D)):
        return norms.unsqueeze(0)
    out = weight.shape[0]
    if norms.numel() == weight[0].numel():  # per (channel, kernel position) from the Gram diagonal
        return norms.reshape(1, *weight.shape[1:])
    groups = module.groups
    per_group = norms.reshape(groups, -1)  # [groups, in / groups]
    row_group = torch.arange(out, device=weight.device) // (out // groups)
    scale = per_group[row_group]  # [out, in / groups]
    return scale.reshape(*scale.shape, *([1] * (weight.dim() - 2)))
