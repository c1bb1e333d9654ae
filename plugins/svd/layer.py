"""What the ``svd`` step knows about each targeted layer, and the small rules about its ranks."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .macs import factor_macs, macs_per_rank
from .spectra import Spectrum


@dataclass
class Layer:
    """Everything the step learns about one targeted layer."""

    name: str
    module: nn.Module
    forms: list[str]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    calls: int
    macs: int
    spectra: dict[str, Spectrum] = field(default_factory=dict)
    form: str = ""
    rank: int | None = None

    def cost_per_rank(self, form: str) -> int:
        return macs_per_rank(self.module, form, self.in_shape, self.out_shape) * self.calls

    def factor_macs(self, form: str, rank: int) -> int:
        return factor_macs(self.module, form, rank, self.in_shape, self.out_shape) * self.calls


def trial_key(layer: Layer) -> tuple[str, str, int]:
    return (layer.name, layer.form, layer.rank or 0)


def even_share(layers: list[Layer], needed: float) -> float:
    """The fraction of their MACs ``layers`` would keep if every one gave up the same share."""
    return min(1.0, max(0.0, 1.0 - needed / max(1, sum(layer.macs for layer in layers))))


def rank_at_share(layer: Layer, form: str, share: float) -> int:
    full = layer.spectra[form].full_rank
    return min(full, max(1, int(share * layer.macs / layer.cost_per_rank(form))))


def choose_forms(forms: list[str], wanted: str) -> list[str]:
    if wanted == "auto":
        return forms
    if wanted == "spatial" and "spatial" in forms:
        return ["spatial"]
    return forms[:1]
