"""Layers ``svd`` factorizes through a stand-in, and layers it must leave, with the reason.

transformers' ``Conv1D`` (GPT-2's projections) computes ``x @ W + b`` with ``W`` stored ``[in, out]``:
it is an ``nn.Linear`` with the weight transposed. :func:`linear_standins` swaps each targeted one
for an exact ``nn.Linear`` copy for the length of the step, so shapes, MACs, calibration, timing and
factors work as for any Linear; :func:`restore_unfactorized` puts the original back wherever no
factors replaced the stand-in, so untouched layers keep their class (and ``from_pretrained`` layout).
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.masks import parameter_holders
from torchslim.surgery import replace_submodule
from torchslim.targets import is_transposed_linear


def linear_standins(model: nn.Module, selected: list[tuple[str, nn.Module]]) -> dict[str, tuple[nn.Module, nn.Linear]]:
    """Replace every selected HF ``Conv1D`` by an equal ``nn.Linear``; returns ``{name: (original, stand-in)}``."""
    swapped: dict[str, tuple[nn.Module, nn.Linear]] = {}
    for index, (name, module) in enumerate(selected):
        if not is_transposed_linear(module):
            continue
        weight = module.weight.detach()  # [in, out]; a mask's effective value when parametrized
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=getattr(module, "bias", None) is not None)
        linear = linear.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if linear.bias is not None:
                linear.bias.copy_(module.bias.detach())
        linear.train(module.training)
        replace_submodule(model, name, linear)
        swapped[name] = (module, linear)
        selected[index] = (name, linear)
    return swapped


def restore_unfactorized(model: nn.Module, swapped: dict[str, tuple[nn.Module, nn.Linear]]) -> None:
    """Put back each original ``Conv1D`` whose stand-in was not replaced by factors."""
    for name, (original, linear) in swapped.items():
        if model.get_submodule(name) is linear:
            replace_submodule(model, name, original)


def tied_reasons(model: nn.Module, selected: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """Selected layers whose weight another module also holds (e.g. ``lm_head`` tied to the embedding).

    Factorizing such a layer would give it its own factors and leave the other holder the full
    matrix: the tie is broken and the model grows. They are skipped with this reason.
    """
    names = {id(m): n for n, m in selected}
    reasons: dict[str, str] = {}
    for group in parameter_holders(model).values():
        if len(group) < 2:
            continue
        for module_name, module, param in group:
            if id(module) in names and param == "weight":
                others = ", ".join(f"{n}.{p}" for n, m, p in group if m is not module)
                reasons[names[id(module)]] = (f"its weight is tied to {others}; factorizing it would untie them and "
                                              f"add parameters, so it is left as is")
    return reasons


def attention_in_proj(model: nn.Module, targets_include: list[str]) -> list[tuple[str, str]]:
    """``nn.MultiheadAttention`` modules under the targets' globs: their packed ``in_proj_weight`` is not
    a layer that factors can replace, so they are listed as skipped with the reason."""
    from fnmatch import fnmatchcase

    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and any(fnmatchcase(name, p) for p in targets_include):
            found.append((f"{name}.in_proj_weight",
                          "nn.MultiheadAttention reads its packed q/k/v in_proj_weight inside "
                          "F.multi_head_attention_forward, so no factor module can stand in for it; left as is"))
    return found
