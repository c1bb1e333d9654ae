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
from torchslim.targets import WEIGHT_LAYERS, HFConv1D, is_transposed_linear, select_modules

#: What ``magnitude`` prunes when a step names no types: the weight layers, attention's packed input
#: projection (a quarter of a ViT's weights) and transformers' Conv1D (GPT-2's projections).
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (*WEIGHT_LAYERS, nn.MultiheadAttention, HFConv1D)

#: Weight matrices held under another name: ``nn.MultiheadAttention``'s packed (or separate) input projections.
_NAMED_MATRICES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


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

    @property
    def transposed(self) -> bool:
        """True when the stored weight is ``[in, out]`` (transformers' ``Conv1D``), the transpose of a Linear's."""
        return not self.is_bias and is_transposed_linear(self.module)

    def effective(self) -> torch.Tensor:
        """The tensor as the module sees it (masks applied), detached."""
        with torch.no_grad():
            return getattr(self.module, self.param_name).detach()

    def matrix(self) -> torch.Tensor:
        """:meth:`effective` in the layout every rule works in: outputs first, inputs second (``[out, in, ...]``)."""
        return self.canonical(self.effective())

    def canonical(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (stored layout) in ``[out, in, ...]`` layout; a view."""
        return tensor.t() if self.transposed else tensor

    def stored_layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (``[out, in, ...]`` layout) in the stored layout, contiguous."""
        return tensor.t().contiguous() if self.transposed else tensor

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
        if (name.startswith("weight") or name in _NAMED_MATRICES) and tensor.dim() >= 2:
            chosen.append(name)
        elif include_bias and name.startswith("bias"):
            chosen.append(name)
    return chosen


def collect_tensors(
    model: nn.Module,
    targets: Targets | None,
    default_types: Sequence[type[nn.Module]] = DEFAULT_TYPES,
    *,
    include_bias: bool = False,
) -> tuple[list[PrunableTensor], list[tuple[str, str]]]:
    """The tensors to prune and the ``(layer, reason)`` pairs left alone.

    A weight matrix is a tensor named ``weight*`` with two or more dimensions (so norms are never
    touched); biases join only with ``include_bias``. A tensor shared by several modules (tied weights)
    is listed once, with all its holders; when a holder is outside the selection (GPT-2's ``lm_head``
    tied to the token embedding ``wte``) the tensor is skipped with the reason, since pruning it would
    zero the same entries in the module nobody asked to prune.
    """
    holders = parameter_holders(model)
    selected = select_modules(model, targets, default_types)
    chosen = {id(m) for _, m in selected}
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
                done = "pruned once, with it" if any(t is first for t in found) else "left as it is, like it"
                skipped.append((f"{module_name}.{param_name}", f"shares its tensor with {first.name}; {done}"))
                continue
            target = PrunableTensor(module_name, module, param_name, holders.get(id(tensor), []))
            if not target.holders:
                target.holders = [(module_name, module, param_name)]
            seen[id(tensor)] = target
            outside = [(n, m, p) for n, m, p in target.holders if id(m) not in chosen]
            if outside:
                skipped.append((target.name, _tied_reason(outside)))
                continue
            found.append(target)
    return found, skipped


def _tied_reason(outside: list[tuple[str, nn.Module, str]]) -> str:
    others = ", ".join(f"{n}.{p} ({type(m).__name__})" if n else p for n, m, p in outside)
    kinds = sorted({type(m).__name__ for _, m, _ in outside})
    return (f"tied to {others}, which the step does not target: pruning it would zero the same entries "
            f"there; target both (e.g. add {', '.join(kinds)} to targets.types) to prune them together, "
            f"or exclude this layer")


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
