"""A tiny classification task for plugin tests: a small CNN and a learnable synthetic 4-class dataset."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..zoo import DigitsCNN


@dataclass
class TinyTask:
    """A small classifier and a learnable synthetic task for plugin tests (CPU, well under a second).

    ``model`` is a :class:`torchslim.zoo.DigitsCNN` (convs, batch norm, linears) for ``N x 1 x 8 x 8``
    inputs and 4 classes; ``build()`` returns a fresh copy of the same initial weights.
    """
    model: Any
    train_data: Any
    eval_data: Any
    example_inputs: tuple
    seed: int = 0

    def build(self) -> Any:
        """A fresh model of the same architecture and initial weights (a ``base_model`` for load)."""
        return _tiny_model(self.seed)

    def run_kwargs(self) -> dict[str, Any]:
        """``train_data``, ``eval_data`` and ``example_inputs`` as :meth:`Engine.run` keywords."""
        return {"train_data": self.train_data, "eval_data": self.eval_data, "example_inputs": self.example_inputs}


def _tiny_model(seed: int) -> Any:


    torch.manual_seed(seed)
    return DigitsCNN(width=4, classes=4)


@functools.lru_cache(maxsize=8)
def _trained_state(seed: int, samples: int, batch_size: int, train_steps: int) -> dict:

    task = tiny_task(seed, samples, batch_size)
    model = task.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    done = 0
    while done < train_steps:
        for inputs, target in task.train_data:
            loss = torch.nn.functional.cross_entropy(model(inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done >= train_steps:
                break
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_task(seed: int = 0, samples: int = 256, batch_size: int = 32, train_steps: int = 0) -> TinyTask:
    """Build a :class:`TinyTask`; ``train_steps`` > 0 trains the model first (Adam, lr 1e-2).

    Each class is a fixed random 8x8 pattern; inputs are the pattern of their class plus noise.
    """
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 1, 8, 8, generator=gen)
    y = torch.randint(0, 4, (samples,), generator=gen)
    x = prototypes[y] + 1.5 * torch.randn(samples, 1, 8, 8, generator=gen)
    split = samples * 3 // 4
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    test = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=batch_size)
    model = _tiny_model(seed)
    if train_steps:
        # trained once per process and settings; every call still gets its own model object
        model.load_state_dict(_trained_state(seed, samples, batch_size, train_steps))
    model.eval()
    return TinyTask(model=model, train_data=train, eval_data=test, example_inputs=(x[:8],), seed=seed)
