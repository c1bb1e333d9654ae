"""The caller's model, lent to plugins as ``context.original_model`` without a second deep copy."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..errors import StepError
from ..surgery import fingerprint, model_device, private_copy


class LentOriginal:
    """Lends the caller's model (eval mode, gradients off) on first use; :meth:`restore` puts its flags back.

    No copy is made unless one must be: when the run works on another device than the model's, or,
    under ``torchrun``, when the ranks' models differ (each rank then gets rank 0's weights). Plugins
    must not change it; :meth:`check` names the first tensor written in place, so a step that does
    fails instead of silently changing the user's model.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.lent: nn.Module | None = None
        self.flags: list[tuple[nn.Module, bool]] = []
        self.grads: list[tuple[torch.Tensor, bool]] = []
        self.versions: list[tuple[str, torch.Tensor, int]] = []

    def get(self) -> nn.Module:
        """The original model, ready to read (lent or, where it must be, copied)."""
        if self.lent is None:
            self.lent = self._copy() if self._needs_copy() else self._lend()
        return self.lent

    def _needs_copy(self) -> bool:
        here = model_device(self.model)
        if here.type != self.device.type or (self.device.index is not None and here.index != self.device.index):
            return True
        return distributed.is_distributed() and not distributed.same_on_every_rank(fingerprint(self.model))

    def _copy(self) -> nn.Module:
        copied = private_copy(self.model).to(self.device).eval().requires_grad_(False)
        distributed.sync_model(copied, "the original model", warn=False)
        return copied

    def _lend(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.grads = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval().requires_grad_(False)
        state = self.model.state_dict(keep_vars=True)
        self.versions = [(name, t, t._version) for name, t in state.items()]
        return self.model

    def check(self, where: str) -> None:
        """Raise a :class:`StepError` when a lent tensor was written in place since it was lent."""
        for name, tensor, version in self.versions:
            if tensor._version != version:
                raise StepError(f"{where} changed context.original_model in place ({name}); it is the caller's "
                                f"model, lent read-only: copy it before changing it")

    def restore(self) -> None:
        """Give the caller's model back its training flags and ``requires_grad``."""
        for module, training in self.flags:
            module.training = training
        for param, wanted in self.grads:
            param.requires_grad_(wanted)
        self.flags, self.grads = [], []
