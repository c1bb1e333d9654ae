"""The built-in demo: train a small CNN on scikit-learn's digits, compress it, show before/after."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..engine import Engine
from ..results import RunResult
from ..zoo import DigitsCNN
from .digits import digits_loaders

#: Steps the demo would like to run, in order; those whose method is not installed are left out.
DEMO_STEPS: list[dict[str, Any]] = [
    {"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
    {"accelerate": {"method": "svd", "mac_ratio": 0.6, "targets": {"include": ["conv2", "conv3", "fc1"]}}},
    {"finetune": {"method": "sgd", "epochs": 4, "lr": 0.02}},
]


def demo_recipe(engine: Engine) -> dict[str, Any]:
    """The demo recipe made of the :data:`DEMO_STEPS` whose methods are installed."""
    steps = []
    for step in DEMO_STEPS:
        (stage, body), = step.items()
        if body["method"] in engine.methods(stage):
            steps.append(step)
    evaluate = [name for name in ("accuracy", "params", "nonzeros", "macs", "latency", "size")
                if name in engine.methods("evaluate")]
    return {"name": "demo", "steps": steps, "evaluate": evaluate,
            "evaluation": {"latency_runs": 30, "threads": 1},
            "constraints": {"max_drop": {"accuracy": 0.02}} if "accuracy" in evaluate else {}}


def search_recipe(engine: Engine, metric: str, ratio: float) -> dict[str, Any]:
    """The demo recipe as an automatic search: meet ``metric <= ratio x baseline`` within 1 point."""
    base = demo_recipe(engine)
    methods = [s for s in base["steps"] if next(iter(s)) != "finetune"]
    finetune = next((s for s in base["steps"] if next(iter(s)) == "finetune"), None)
    return {
        "name": f"demo-search-{metric}-{ratio}", "evaluate": base["evaluate"], "evaluation": base["evaluation"],
        "constraints": {"max_drop": {"accuracy": 0.01}},
        "search": {"target": {metric: ratio}, "methods": methods, "finetune": finetune, "calibration_batches": 2},
    }


def train_classifier(model: nn.Module, loader, epochs: int = 12, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` with AdamW and cross-entropy; deterministic for a given seed on CPU."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    with tqdm(total=epochs * len(loader), desc="training the base model", disable=not sys.stderr.isatty(),
              leave=False) as bar:
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                scheduler.step()
                bar.update(1)
    return model.eval()


def trained_digits_model(seed: int = 0, epochs: int = 12) -> tuple[nn.Module, Any, Any]:
    """A DigitsCNN trained on the digits train split, with the (train, test) loaders."""
    torch.manual_seed(seed)
    train, test = digits_loaders(seed=seed)
    model = train_classifier(DigitsCNN(), train, epochs=epochs, seed=seed)
    return model, train, test


def run_demo(seed: int = 0, epochs: int = 12, recipe: Any = None, engine: Engine | None = None,
             echo=print, out_dir: Any = None) -> RunResult:
    """Train the digits CNN, run the demo recipe (or ``recipe``) and print the report."""
    engine = engine or Engine()
    start = time.perf_counter()
    echo(f"training DigitsCNN on scikit-learn digits ({epochs} epochs) ...")
    model, train, test = trained_digits_model(seed, epochs)
    echo(f"trained in {time.perf_counter() - start:.1f}s; running the recipe ...")
    recipe = recipe if recipe is not None else demo_recipe(engine)
    result = engine.run(model, recipe, train_data=train, eval_data=test,
                        example_inputs=(next(iter(test))[0][:1],), seed=seed, out_dir=out_dir)
    echo(result.table())
    echo(f"total {time.perf_counter() - start:.1f}s")
    return result
