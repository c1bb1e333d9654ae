"""Calibration statistics for data-aware factors: input-patch or output Gram matrices, summed by forward hooks."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

def _padded(layer: nn.Module, x: torch.Tensor, axes: str = "all") -> torch.Tensor:
    """``x`` padded as ``layer`` pads it (mode and "same" included); ``axes="height"`` pads only H."""
    pad = list(layer._reversed_padding_repeated_twice)
    if axes == "height":
        pad[:2] = [0, 0]
    if not any(pad):
        return x
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, pad, mode=mode)


def _patches(layer: nn.Module, x: torch.Tensor, form: str) -> torch.Tensor:
    """Input patches ``(groups, D', positions)`` that ``form``'s matrix multiplies."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if isinstance(layer, nn.Conv1d):  # treat as a 1 x K Conv2d
        x = _padded(layer, x).unsqueeze(2)
        patches = F.unfold(x, (1, layer.kernel_size[0]), dilation=(1, layer.dilation[0]),
                           stride=(1, layer.stride[0]))
    elif form == "weight":
        patches = F.unfold(_padded(layer, x), layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    else:  # spatial: vertical Kh x 1 patches at every column (cross-column correlations are ignored)
        patches = F.unfold(_padded(layer, x, "height"), (layer.kernel_size[0], 1),
                           dilation=(layer.dilation[0], 1), stride=(layer.stride[0], 1))
    n, rows, positions = patches.shape
    g = layer.groups
    return patches.reshape(n, g, rows // g, positions).permute(1, 2, 0, 3).reshape(g, rows // g, n * positions)


def _outputs(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The bias-free output ``(groups, O', positions)`` of a Linear/ConvNd."""
    if isinstance(layer, nn.Linear):
        y = y.reshape(-1, y.shape[-1])
        if layer.bias is not None:
            y = y - layer.bias
        return y.t().unsqueeze(0)
    if layer.bias is not None:
        y = y - layer.bias.view(1, -1, *([1] * (y.dim() - 2)))
    n, out = y.shape[:2]
    g = layer.groups
    return y.reshape(n, g, out // g, -1).permute(1, 2, 0, 3).reshape(g, out // g, -1)


def needed_gram(layer: nn.Module, form: str) -> str:
    """Which calibration statistic data-aware ``form`` needs: ``"out"`` or ``"in"``."""
    if form == "spatial":
        return "in"
    if form == "linear":
        rows, cols = layer.out_features, layer.in_features
    else:
        rows = layer.out_channels // layer.groups
        cols = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return "out" if rows <= cols else "in"


class GramCollector:
    """Forward hooks that sum the Gram matrices data-aware factorization needs, over calibration passes.

    ``wanted`` maps a module name to ``(module, forms)``. After the passes, :meth:`grams` returns, per
    name and form, ``{"out_gram": ...}`` or ``{"in_gram": ...}`` for :func:`compute_spectrum`.
    Use as a context manager around the forward passes.
    """

    def __init__(self, wanted: dict[str, tuple[nn.Module, Sequence[str]]]) -> None:
        self.wanted = wanted
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.handles: list = []

    def _hook(self, name: str, layer: nn.Module, forms: Sequence[str]):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().float()
            for form in forms:
                source = needed_gram(layer, form)
                data = _outputs(layer, output.detach().float()) if source == "out" else _patches(layer, x, form)
                gram = data @ data.transpose(1, 2)
                key = (name, form)
                self.sums[key] = gram if key not in self.sums else self.sums[key] + gram
        return hook

    def __enter__(self) -> "GramCollector":
        for name, (layer, forms) in self.wanted.items():
            self.handles.append(layer.register_forward_hook(self._hook(name, layer, forms)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def grams(self, name: str, form: str) -> dict[str, torch.Tensor]:
        """Keyword arguments for :func:`compute_spectrum` (empty when the layer never ran)."""
        gram = self.sums.get((name, form))
        if gram is None:
            return {}
        layer = self.wanted[name][0]
        return {"out_gram": gram} if needed_gram(layer, form) == "out" else {"in_gram": gram}
