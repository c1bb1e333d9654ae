"""Measured sensitivity: how much the model's output changes when one layer alone is cut."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.batches import as_inputs, call_model, float_tensors
from torchslim.measure import eval_mode

from .layer import Layer, even_share, rank_at_share
from .spectra import factorize


def sensitivities(model: nn.Module, example_inputs: Any, layers: list[Layer],
                   needed: float) -> dict[str, float]:
    """Per layer: the model's relative output error with only that layer cut, per unit of predicted error.

    Each layer is probed at the rank one MAC ratio everywhere would give it; the ratio of the
    measured (squared, relative) change of the model's floating-point outputs to the layer's own
    normalized energy lost turns the layer's spectrum into a model-level error estimate.
    """
    inputs = as_inputs(example_inputs)
    share = even_share(layers, needed)
    with eval_mode(model), torch.no_grad():
        reference = float_tensors(call_model(model, inputs))
        scale = sum(float(t.pow(2).sum()) for t in reference) or 1.0
        weights = {}
        for layer in layers:
            form = layer.forms[0]
            spectrum = layer.spectra[form]
            rank = rank_at_share(layer, form, share)
            predicted = spectrum.error_at(rank) ** 2
            if predicted <= 0.0:
                continue
            probe = factorize(layer.module, spectrum, rank)
            handle = layer.module.register_forward_hook(lambda module, args, output: probe(args[0]))
            try:
                changed = float_tensors(call_model(model, inputs))
            finally:
                handle.remove()
            error = sum(float((a - b).pow(2).sum()) for a, b in zip(changed, reference)) / scale
            weights[layer.name] = error / predicted
    return weights
