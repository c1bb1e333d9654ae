"""Deep records of a model, to prove a step left the caller's model and the teacher untouched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Snapshot:
    structure: tuple[tuple[str, str], ...]
    training: tuple[tuple[str, bool], ...]
    grads: tuple[tuple[str, bool], ...]
    state: dict


def model_snapshot(model: "nn.Module") -> Snapshot:
    """A deep record of ``model`` (module tree, modes, ``requires_grad`` flags, state dict values)."""
    return Snapshot(
        structure=tuple((n, f"{type(m).__module__}.{type(m).__qualname__}") for n, m in model.named_modules()),
        training=tuple((n, m.training) for n, m in model.named_modules()),
        grads=tuple((n, p.requires_grad) for n, p in model.named_parameters()),
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def differences(before: Snapshot, after: Snapshot, modes: bool = True) -> list[str]:

    out = []
    if before.structure != after.structure:
        changed = sorted(set(before.structure) ^ set(after.structure))[:3]
        out.append(f"module tree changed (e.g. {changed})")
    if modes and before.training != after.training:
        out.append("train/eval mode changed")
    if before.grads != after.grads:
        out.append("requires_grad flags changed")
    if before.state.keys() != after.state.keys():
        out.append(f"state dict keys changed ({sorted(set(before.state) ^ set(after.state))[:3]})")
    else:
        # equal_nan: a NaN the user had is not a change; dtype/shape changes count
        changed = [k for k, v in before.state.items()
                   if v.shape != after.state[k].shape or v.dtype != after.state[k].dtype
                   or not torch.equal(v, after.state[k])]
        if changed:
            out.append(f"values of {changed[:5]} changed")
    return out


def assert_untouched(before: Snapshot, model: "nn.Module", what: str, fix: str) -> None:
    problems = differences(before, model_snapshot(model))
    assert not problems, f"{what}: {'; '.join(problems)}. {fix}"
