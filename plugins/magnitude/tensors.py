"""Which tensors a pruning step touches: weight matrices of the selected modules, tied weights once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim.errors import ModelError
from torchslim.masks import Mask, parameter_holders, underlying_tensor
from torchslim.recipe import Targets
from torchslim.targets import WEIGHT_LAYERS, select_modules



@dataclass
class PrunableTensor:
    """One stored tensor to prune, with every ``(module_name, module, param_name)`` that holds it."""

    module_name: str
    module: nn.Module
    param_name: str
    holders: list[tuple[str, nn.Module, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``module.param`` (``fc1.weight``)."""
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def is_bias(self) -> bool:
        return self.param_name.startswith("bias")

    @property
    def stored(self) -> torch.Tensor:
        """The stored tensor (a parametrization's ``original`` when masked already)."""
        return underlying_tensor(self.module, self.param_name)

    def effective(self) -> torch.Tensor:
        """The tensor as the module sees it (masks applied), detached."""
        with torch.no_grad():
            return getattr(self.module, self.param_name).detach()

    def writable(self) -> bool:
        """True when the stored tensor equals the effective one up to masks (no other parametrization)."""
        if not parametrize.is_parametrized(self.module, self.param_name):
            return True
        return all(isinstance(p, Mask) for p in self.module.parametrizations[self.param_name])


def _tensor_names(module: nn.Module, include_bias: bool) -> list[str]:
    names = list(module._parameters)
    if parametrize.is_parametrized(module):
        names += [n for n in module.parametrizations.keys() if n not in names]
    chosen = []
    for name in names:
        tensor = underlying_tensor(module, name)
        if tensor is None or not tensor.is_floating_point():
            continue
        if name.startswith("weight") and tensor.dim() >= 2:
            chosen.append(name)
        elif include_bias and name.startswith("bias"):
            chosen.append(name)
    return chosen


def collect_tensors(
    model: nn.Module,
    targets: Targets | None,
    default_types: Sequence[type[nn.Module]] = WEIGHT_LAYERS,
    *,
    include_bias: bool = False,
) -> tuple[list[PrunableTensor], list[tuple[str, str]]]:
    """The tensors to prune and the ``(layer, reason)`` pairs left alone.

    A weight matrix is a tensor named ``weight*`` with two or more dimensions (so norms are never
    touched); biases join only with ``include_bias``. A tensor shared by several modules (tied weights)
    is listed once, with all its holders, even holders outside the selection, so they stay consistent.
    """
    holders = parameter_holders(model)
    selected = select_modules(model, targets, default_types)
    found: list[PrunableTensor] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[int, PrunableTensor] = {}
    for module_name, module in selected:
        names = _tensor_names(module, include_bias)
        if not names:
            skipped.append((module_name, "has no weight matrix to prune"))
            continue
        for param_name in names:
            tensor = underlying_tensor(module, param_name)
            first = seen.get(id(tensor))
            if first is not None:
                skipped.append((f"{module_name}.{param_name}",
                                f"shares its tensor with {first.name}; pruned once, with it"))
                continue
            target = PrunableTensor(module_name, module, param_name, holders.get(id(tensor), []))
            if not target.holders:
                target.holders = [(module_name, module, param_name)]
            seen[id(tensor)] = target
            found.append(target)
    return found, skipped


def check_finite(targets: Sequence[PrunableTensor]) -> None:
    """Raise :class:`ModelError` naming the first tensor that holds NaN or inf values."""
    for target in targets:
        values = target.effective()
        if bool(torch.isfinite(values.sum())):  # a finite sum means every value is finite (one cheap pass)
            continue
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            raise ModelError(
                f"layer {target.name}: {int(bad.sum())} of {values.numel()} values are NaN or inf; "
                f"magnitude pruning cannot rank them. Fix the model (or exclude the layer in 'targets')."
            )
