"""Writing a round's decisions into the model: masks on every holder, reconstructed values, undo on failure."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from torchslim.masks import Mask, apply_mask, get_mask

from .tensors import PrunableTensor


class Undo:
    """Remembers each tensor's mask (and values, when rewritten) before it changes, to restore on failure."""

    def __init__(self) -> None:
        self.saved: list[tuple[PrunableTensor, torch.Tensor | None, torch.Tensor | None]] = []

    def record(self, target: PrunableTensor, values: bool) -> None:
        mask = get_mask(target.module, target.param_name)
        self.saved.append((target, target.stored.detach().clone() if values else None,
                           None if mask is None else mask.clone()))

    def restore(self) -> None:
        for target, values, mask in reversed(self.saved):
            with torch.no_grad():
                if mask is None:
                    for _, module, param_name in target.holders:
                        if get_mask(module, param_name) is not None:
                            parametrize.remove_parametrizations(module, param_name, leave_parametrized=False)
                else:
                    get_mask(target.module, target.param_name).copy_(mask)
                if values is not None:
                    target.stored.copy_(values)


def apply_keep(target: PrunableTensor, keep: torch.Tensor, weight: torch.Tensor | None, undo: Undo) -> bool:
    """Write reconstructed values (if any) and mask every holder of ``target`` with one shared mask.

    ``keep`` and ``weight`` are in ``[out, in, ...]`` layout (:meth:`PrunableTensor.matrix`). The stored
    values are left as they are (the caller zeroes them once every mask is in place), so undoing a mask
    needs no copy of them. Returns False when nothing was pruned or masked.
    """
    if bool(keep.all()) and get_mask(target.module, target.param_name) is None:
        return False  # nothing pruned here: leave the tensor unparametrized
    undo.record(target, values=weight is not None)
    if weight is not None:
        with torch.no_grad():
            target.stored.copy_(target.stored_layout(weight))
    # the mask was made for this tensor alone: no second copy
    shared = Mask(target.stored_layout(keep).contiguous(), copy=False)
    for _, module, param_name in target.holders:
        shared = apply_mask(module, param_name, shared, zero_stored=False)
    return True
