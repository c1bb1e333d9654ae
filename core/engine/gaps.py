"""No silent gaps: what a step left undone that the user should hear about, found by the engine itself.

Before each compress/accelerate/finetune step the engine takes a :class:`Before` record; after it,
:func:`step_warnings` compares and returns sentences for the run report, the table and the CLI:

- the step changed nothing at all;
- large tensors (1 % of the model's weights or more) that the method's default targets leave out;
- tied weights (one tensor held by several modules) changed through one holder while another is not
  targeted, or untied by the step (the model then holds two copies).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..masks import parameter_holders
from ..recipe import Step, Targets
from ..surgery import fingerprint
from ..targets import WEIGHT_LAYERS, select_modules

#: A tensor holding at least this share of the model's weights is "large".
LARGE_SHARE = 0.01


@dataclass
class Before:
    """What the engine notes about the model before a step."""

    digest: str
    selected: set[str]
    default_targets: bool
    tied: list[list[str]] = field(default_factory=list)
    tied_digests: list[str] = field(default_factory=list)
    outside: list[tuple[str, str, float]] = field(default_factory=list)


def before_step(model: nn.Module, step: Step, plugin: Any) -> Before:
    """Record the model's digest, the modules the step targets, tied tensors and untargeted large ones."""
    types = getattr(plugin, "default_types", WEIGHT_LAYERS)
    selected = {name for name, _ in select_modules(model, step.targets, types)}
    holders = parameter_holders(model)
    groups = [group for group in holders.values() if len({n for n, _, _ in group}) > 1]
    tied = [[_tensor_name(n, p) for n, _, p in group] for group in groups]
    digests = [_digest(getattr(group[0][1], group[0][2])) for group in groups]
    record = Before(fingerprint(model), selected, step.targets == Targets(), tied, digests)
    if record.default_targets and step.stage in ("compress", "accelerate"):
        record.outside = _large_untargeted(model, selected, holders)
    return record


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _tensor_name(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def _large_untargeted(model: nn.Module, selected: set[str],
                      holders: dict[int, list[tuple[str, nn.Module, str]]]) -> list[tuple[str, str, float]]:
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) or 1
    found = []
    for group in holders.values():
        name, module, param = group[0]
        if any(n in selected for n, _, _ in group):
            continue
        tensor = getattr(module, param, None)
        numel = tensor.numel() if tensor is not None else 0
        if numel / total >= LARGE_SHARE:
            found.append((_tensor_name(name, param), type(module).__name__, numel / total))
    return sorted(found, key=lambda item: -item[2])


def step_warnings(before: Before, model: nn.Module, step: Step, skipped: list[tuple[str, str]]) -> list[str]:
    """Sentences about what the step left undone or changed beyond its targets (empty when all is well)."""
    out = []
    if step.stage != "deploy" and fingerprint(model) == before.digest:
        why = f"; it skipped {len(skipped)} layer(s), see the step's skipped list" if skipped else ""
        out.append(f"{step.label} changed nothing{why}")
    if before.outside:
        share = sum(s for _, _, s in before.outside)
        shown = ", ".join(f"{n} ({kind}, {s:.0%})" for n, kind, s in before.outside[:4])
        more = f" and {len(before.outside) - 4} more" if len(before.outside) > 4 else ""
        out.append(f"{step.label} left out {len(before.outside)} large tensor(s) holding {share:.0%} of the weights, "
                   f"which its default targets do not cover: {shown}{more}; name their types in targets.types "
                   f"to include them, or set targets explicitly to leave them out knowingly")
    if step.stage in ("compress", "accelerate"):
        out += _tie_warnings(before, model, step)
    return out


def _tie_warnings(before: Before, model: nn.Module, step: Step) -> list[str]:
    after = {}
    for group in parameter_holders(model).values():
        names = [_tensor_name(n, p) for n, _, p in group]
        for name in names:
            after[name] = set(names)
    out = []
    for group, digest in zip(before.tied, before.tied_digests):
        still = after.get(group[0], set())
        if not set(group) <= still:
            out.append(f"{step.label} untied {' and '.join(group)}: they shared one tensor and now hold "
                       f"separate ones (more parameters); exclude one of them in targets to keep the tie")
            continue
        module, _, param = group[0].rpartition(".")
        holder = model.get_submodule(module) if module else model
        if _digest(getattr(holder, param)) == digest:
            continue  # the tied tensor did not change
        modules = [name.rpartition(".")[0] for name in group]
        targeted = [m for m in modules if m in before.selected]
        if targeted and len(targeted) < len(modules):
            others = [g for g, m in zip(group, modules) if m not in before.selected]
            out.append(f"{step.label} changed the tied tensor {group[0]} through {targeted[0]}, so "
                       f"{', '.join(others)} (not targeted) changed with it; exclude {targeted[0]} to keep them")
    return out
