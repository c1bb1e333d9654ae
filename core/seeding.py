"""Data order that depends only on (seed, step): reseed a loader's generators, restore them afterwards."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch


def loader_generators(loader: Iterable | None) -> list[torch.Generator]:
    """The random generators that decide a DataLoader's order and worker seeds (each once)."""
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


@contextlib.contextmanager
def seeded_loader(loader: Iterable | None, seed: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``reseed(seed)``, which seeds the loader's generators; their states are restored afterwards.

    With ``seed`` the generators are seeded on entry. The user's loader keeps its own shuffle sequence,
    while every run of the step sees the same order, so a resumed run matches an uninterrupted one.
    """
    generators = loader_generators(loader)
    states = [g.get_state() for g in generators]

    def reseed(value: int) -> None:
        for gen in generators:
            gen.manual_seed(value)

    if seed is not None:
        reseed(seed)
    try:
        yield reseed
    finally:
        for gen, state in zip(generators, states):
            gen.set_state(state)
