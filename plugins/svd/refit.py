"""Sequential refit (option ``update``): each Linear's factors fitted to the dense model's outputs from the
inputs the already factorized layers really produce.

Data-aware factors (SVD-LLM whitening) minimise ``||W X - W' X||`` on the dense model's inputs ``X``. Once
the earlier layers are factorized, a layer receives ``X'`` instead, and its own truncation adds to the
drift. With the ranks already chosen, the refit walks the model's repeated blocks in forward order
(:class:`~torchslim.calibration.PairedBlocks`: the dense and the factorized model's activations side by
side) and, layer group by layer group inside each block, replaces the target ``W X`` on ``X'`` in closed
form:

- ``W* = (T X'^T + λ s W)(G' + λ s I)^-1``, with ``G' = X'^T X'`` and ``T`` the target the option
  ``match`` names (:mod:`torchslim.calibration.paired`): the dense output ``W X`` ('dense'; ``T X'^T = W
  X^T X'``, the cross Gram of the dense and factorized inputs, paired token by token), plus for a layer
  added into the residual stream the drift of that sum ('stream'); pulled toward ``W`` by the ridge
  ``λ s`` (``λ`` = ``update_damping``, ``s`` the mean of ``diag G'``), so directions the calibration text
  never excites keep the original weights;
- since ``T - W' X' = (T - W* X') + (W* - W') X'`` with the first term orthogonal to anything
  applied to ``X'``, the best rank-``r`` ``W'`` is the truncation-aware whitened SVD of ``W*`` under
  ``G'``: the SVD-LLM factors of ``W*``, at the rank the allocation chose.

With ``update_epochs`` (:mod:`torchslim.calibration.block_fit`), each block's factors are then fitted by
Adam to the dense block's outputs, for what per-layer least squares cannot see: the block's
nonlinearities and how its layers' errors combine.

Memory: the model, the factors, and two copies of one block's calibration activations (dense and
factorized). Layers outside the blocks, and conv layers, keep their one-shot factors.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.calibration import (
    PairedBlocks,
    block_output_error,
    fit_block_outputs,
    layer_groups,
    paired_stats,
    sum_points,
)
from torchslim.calibration.paired import Match
from torchslim.measure import eval_mode
from torchslim.surgery import replace_submodule

from .layer import Layer
from .spectra import compute_spectrum, factorize

log = logging.getLogger("torchslim")


def _swap(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        replace_submodule(model, name, module)


def refit(model: nn.Module, layers: list[Layer], batches: list[Any], damping: float,
          update_damping: float, match: Match = "stream", epochs: int = 0, lr: float = 3e-4,
          errors: list[tuple[float, float]] | None = None) -> dict[str, nn.Module]:
    """Refitted factor modules, by layer name, for the chosen ``linear`` layers inside repeated blocks.

    ``match`` sets each layer's target (:mod:`torchslim.calibration.paired`): 'dense' its dense outputs,
    'stream' also the residual stream's drift where its output is added in. With ``epochs``, each block's
    factors are then fitted to the dense block's outputs by Adam (:func:`~torchslim.calibration.fit_block_outputs`)
    and ``errors`` receives each block's relative output error before and after. The model is left as it
    came (originals in place); an empty result when the model has no blocks.
    """
    chosen = {layer.name: layer for layer in layers if layer.rank is not None and layer.form == "linear"}
    if not chosen:
        return {}
    paired = PairedBlocks.open(model, batches)
    if paired is None:
        log.info("svd update: the model has no repeated blocks run in order; one-shot factors kept")
        return {}
    originals = {name: layer.module for name, layer in chosen.items()}
    built: dict[str, nn.Module] = {}
    try:
        with eval_mode(model), torch.no_grad():
            for index, reference in paired.walk():
                prefix = f"{paired.compressed.name}.{index}."
                inside = {name[len(prefix):]: chosen[name] for name in chosen if name.startswith(prefix)}
                if not inside:
                    continue
                # leaves the block's factors in place: the walk runs the factorized block next
                _refit_block(model, paired, index, reference, inside, built, damping, update_damping, match)
                if epochs > 0:
                    factors = [p for layer in inside.values() if layer.name in built for p in built[layer.name].parameters()]
                    before = block_output_error(paired, index, reference)
                    fit_block_outputs(paired, index, reference, factors, epochs, lr)
                    if errors is not None:
                        errors.append((before, block_output_error(paired, index, reference)))
    finally:
        _swap(model, originals)
    return built


def _refit_block(model: nn.Module, paired: PairedBlocks, index: int, reference: nn.Module,
                 inside: dict[str, Layer], built: dict[str, nn.Module], damping: float, update_damping: float,
                 match: Match) -> None:
    """Refit the chosen layers of block ``index`` (``inside``: by name in the block), group by group."""
    block = paired.blocks[index]
    first = paired.compressed.batch_inputs(0)
    names = list(inside)
    points = sum_points(block, names, first) if match == "stream" else {}
    for group in layer_groups(block, names, first):
        stats = paired_stats(block, reference, group, paired.compressed, paired.dense, match, points)
        for name in group:
            if name not in stats:
                continue
            layer = inside[name]
            weight = layer.module.weight.detach().double()
            entry = stats[name]
            scale = update_damping * float(entry.gram.diagonal().mean().clamp_min(1e-12))
            eye = torch.eye(entry.gram.shape[0], dtype=entry.gram.dtype)
            target = torch.linalg.solve(entry.gram + scale * eye, (entry.rhs(weight) + scale * weight).t()).t()
            spectrum = compute_spectrum(target.float().unsqueeze(0), "linear", in_gram=entry.gram.float().unsqueeze(0),
                                        damping=damping)
            built[layer.name] = factorize(layer.module, spectrum, layer.rank)
        _swap(model, {inside[n].name: built[inside[n].name] for n in group if inside[n].name in built})
