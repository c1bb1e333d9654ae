"""Sequential refit (option ``update``): each Linear's factors fitted to the dense model's outputs from the
inputs the already factorized layers really produce.

Data-aware factors (SVD-LLM whitening) minimise ``||W X - W' X||`` on the dense model's inputs ``X``. Once
the earlier layers are factorized, a layer receives ``X'`` instead, and its own truncation adds to the
drift. With the ranks already chosen, the refit walks the model's repeated blocks in forward order
(:class:`~torchslim.calibration.BlockStream`: the dense and the factorized model's activations side by
side) and, layer group by layer group inside each block, replaces the target ``W X`` on ``X'`` in closed
form:

- ``W* = (W C + λ s W)(G' + λ s I)^-1``, with ``C = X^T X'`` (cross Gram of the dense and factorized
  inputs, paired token by token) and ``G' = X'^T X'``: the least-squares map from ``X'`` to the dense
  output ``W X``, pulled toward ``W`` by the ridge ``λ s`` (``λ`` = ``update_damping``, ``s`` the mean of
  ``diag G'``), so directions the calibration text never excites keep the original weights;
- since ``W X - W' X' = (W X - W* X') + (W* - W') X'`` with the first term orthogonal to anything
  applied to ``X'``, the best rank-``r`` ``W'`` is the truncation-aware whitened SVD of ``W*`` under
  ``G'``: the SVD-LLM factors of ``W*``, at the rank the allocation chose.

Memory: the model, the factors, and two copies of one block's calibration activations (dense and
factorized). Layers outside the blocks, and conv layers, keep their one-shot factors.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.calibration import BlockStream, feature_rows
from torchslim.measure import eval_mode
from torchslim.surgery import replace_submodule

from .layer import Layer
from .spectra import compute_spectrum, factorize

log = logging.getLogger("torchslim")


class _Capture:
    """Forward pre-hooks keeping each watched layer's input of the batch running now (real tokens only)."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers, self.inputs, self.order, self.handles = layers, {}, [], []
        self.mask: torch.Tensor | None = None

    def __enter__(self) -> "_Capture":
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in self.inputs:
                self.order.append((name, args[0].data_ptr()))
            self.inputs[name] = feature_rows(args[0].detach(), self.mask).double()
        return hook


def _groups(order: list[tuple[str, int]]) -> list[list[str]]:
    """Layer names in forward order, consecutive layers fed the same input tensor grouped (q/k/v)."""
    groups: list[list[str]] = []
    last = None
    for name, pointer in order:
        if groups and pointer == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = pointer
    return groups


def _swap(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        replace_submodule(model, name, module)


def _run(block: nn.Module, inputs: tuple[list[Any], dict[str, Any]], capture: _Capture,
         mask: torch.Tensor | None) -> None:
    args, kwargs = inputs
    capture.mask = mask
    capture.inputs = {}
    block(*args, **kwargs)


def refit(model: nn.Module, layers: list[Layer], batches: list[Any], damping: float,
          update_damping: float) -> dict[str, nn.Module]:
    """Refitted factor modules, by layer name, for the chosen ``linear`` layers inside repeated blocks.

    The model is left as it came (originals in place); an empty result when the model has no blocks.
    """
    chosen = {layer.name: layer for layer in layers if layer.rank is not None and layer.form == "linear"}
    if not chosen:
        return {}
    dense = BlockStream.open(model, batches)
    factored = BlockStream.open(model, batches)
    if dense is None or factored is None:
        log.info("svd update: the model has no repeated blocks run in order; one-shot factors kept")
        return {}
    originals = {name: layer.module for name, layer in chosen.items()}
    built: dict[str, nn.Module] = {}
    try:
        with eval_mode(model), torch.no_grad():
            for index, block in enumerate(dense.blocks):
                inside = {name: layer.module for name, layer in chosen.items() if dense.inside(layer.module) == index}
                if inside:
                    _refit_block(model, block, dense, factored, inside, chosen, originals, built, damping,
                                     update_damping)
                _swap(model, {n: m for n, m in originals.items()})
                dense.run(index, advance=True)
                _swap(model, built)
                factored.run(index, advance=True)
    finally:
        _swap(model, originals)
    return built


def _refit_block(model: nn.Module, block: nn.Module, dense: BlockStream, factored: BlockStream,
                 inside: dict[str, nn.Module], chosen: dict[str, Layer], originals: dict[str, nn.Module],
                 built: dict[str, nn.Module], damping: float, update_damping: float) -> None:
    probe = _Capture(inside)
    _swap(model, originals)
    with probe:
        _run(block, dense.batch_inputs(0), probe, dense.masks[0])
    for group in _groups(probe.order):
        sums: dict[str, list[torch.Tensor]] = {}
        watched = {name: inside[name] for name in group}
        for b in range(len(dense.inputs)):
            _swap(model, originals)
            with _Capture(watched) as cap_dense:
                _run(block, dense.batch_inputs(b), cap_dense, dense.masks[b])
            _swap(model, built)
            with _Capture(watched) as cap_factored:
                _run(block, factored.batch_inputs(b), cap_factored, factored.masks[b])
            for name in group:
                x, x2 = cap_dense.inputs.get(name), cap_factored.inputs.get(name)
                if x is None or x2 is None or x.shape != x2.shape:
                    continue
                cross, gram = x.t() @ x2, x2.t() @ x2
                if name in sums:
                    sums[name][0] += cross
                    sums[name][1] += gram
                else:
                    sums[name] = [cross, gram]
        for name in group:
            if name not in sums:
                continue
            layer = chosen[name]
            weight = originals[name].weight.detach().double()
            cross, gram = sums[name]
            scale = update_damping * float(gram.diagonal().mean().clamp_min(1e-12))
            eye = torch.eye(gram.shape[0], dtype=gram.dtype)
            target = torch.linalg.solve(gram + scale * eye, (weight @ cross + scale * weight).t()).t()
            spectrum = compute_spectrum(target.float().unsqueeze(0), "linear", in_gram=gram.float().unsqueeze(0),
                                        damping=damping)
            built[name] = factorize(originals[name], spectrum, layer.rank)
