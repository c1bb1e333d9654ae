"""ACME's torchslim strategies: named recipes every ACME team runs the same way.

``acme-mobile`` is the recipe ACME ships phone models with: prune gradually to 70% (fine-tuning
between rounds), fine-tune, and refuse the result if top-1 accuracy drops by more than 2 points.
``acme-edge-int8`` adds int8 quantization when the ``torchslim-quantize`` package is installed.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any, Callable

import torchslim

__version__ = "1.0.0"

#: The recipe of ``acme-mobile``, as it would be written in YAML.
ACME_MOBILE: dict[str, Any] = {
    "description": "ACME mobile: 70% sparsity in 3 rounds with fine-tuning between them, then 2 epochs "
                   "of fine-tuning; accuracy may drop at most 2 points",
    "steps": [
        {"compress": {"method": "magnitude", "sparsity": 0.7, "scope": "global", "rounds": 3,
                      "between": {"method": "sgd", "epochs": 1, "lr": 0.01}}},
        {"finetune": {"method": "sgd", "epochs": 2, "lr": 0.01}},
    ],
    "evaluate": ["accuracy", "params", "nonzeros", "size", "latency"],
    "constraints": {"max_drop": {"accuracy": 0.02}},
}

#: ``acme-mobile`` followed by int8 quantization (needs the torchslim-quantize package).
ACME_EDGE_INT8: dict[str, Any] = {
    **ACME_MOBILE,
    "description": "ACME edge: acme-mobile, then int8 weights (dynamic int8 Linear, weight-only int8 conv)",
    "steps": [*ACME_MOBILE["steps"], {"compress": {"method": "int8"}}],
}


class AcmeStrategies:
    """Registers ACME's strategies; a plugin with only ``register_strategies`` adds no method."""

    @torchslim.hookimpl
    def register_strategies(self, register: Callable[..., None]) -> None:
        register("acme-mobile", ACME_MOBILE, description=ACME_MOBILE["description"])
        if find_spec("torchslim_quantize") is not None:  # register only what can run here
            register("acme-edge-int8", ACME_EDGE_INT8, description=ACME_EDGE_INT8["description"])
