"""Built-in strategies: named recipes users run by name (``Engine.run(model, "prune-80", ...)``).

Registered through the ``register_strategies`` hook, the same path a company's own strategy package
takes (see ``contrib/acme-strategies``). ``torchslim strategies`` lists them with their package.
Every strategy ends with ``sgd`` fine-tuning, so it needs ``train_data``.
"""

from __future__ import annotations

from typing import Any, Callable

import torchslim

#: Fine-tuning shared by the built-in strategies: 3 epochs of SGD with momentum, cosine decay.
FINETUNE: dict[str, Any] = {"method": "sgd", "epochs": 3, "lr": 0.01, "momentum": 0.9}

#: name -> (description, recipe dictionary as it would be written in YAML)
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "prune-80": (
        "zero 80% of the Linear/Conv/RNN weights (magnitude, ranked globally), then fine-tune 3 epochs",
        {"steps": [
            {"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
            {"finetune": dict(FINETUNE)},
        ]},
    ),
    "svd-2x": (
        "halve the MACs with data-aware low-rank factors of Linear/Conv layers, then fine-tune 3 epochs",
        {"steps": [
            # measure_latency off: the strategy promises half the MACs on every machine; turn it on
            # in your own recipe to keep only the factors that are faster on your hardware
            {"accelerate": {"method": "svd", "mac_ratio": 0.5, "data_aware": True, "measure_latency": False}},
            {"finetune": dict(FINETUNE)},
        ]},
    ),
    "slim-mobile": (
        "low-rank factors to 60% of the MACs, then 50% magnitude sparsity of all weights (factors "
        "included), then fine-tune 3 epochs",
        {"steps": [
            # factor first: decomposing a pruned layer would throw its mask away
            {"accelerate": {"method": "svd", "mac_ratio": 0.6, "data_aware": True, "measure_latency": False}},
            {"compress": {"method": "magnitude", "sparsity": 0.5, "scope": "global"}},
            {"finetune": dict(FINETUNE)},
        ]},
    ),
}


class BuiltinStrategies:
    """Registers the built-in strategies ``prune-80``, ``svd-2x`` and ``slim-mobile``."""

    @torchslim.hookimpl
    def register_strategies(self, register: Callable[..., None]) -> None:
        for name, (description, recipe) in STRATEGIES.items():
            register(name, {"name": name, "description": description, **recipe}, description=description)
