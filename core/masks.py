"""Pruning masks as :mod:`torch.nn.utils.parametrize` parametrizations.

A mask is a :class:`Mask` parametrization: the module's ``weight`` becomes ``original * mask``, computed
on every access. Because the product is recomputed, the pruned entries stay zero through any training
loop (ours, a user's own, or a third party's optimizer that knows nothing about masks): gradients of
masked entries are zero and whatever an optimizer writes into ``original`` is multiplied away.
:func:`finalize` bakes the masks into plain parameters.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from torchslim.masks import apply_mask, finalize, get_mask
    >>> layer = nn.Linear(4, 2)
    >>> _ = apply_mask(layer, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool))
    >>> int((layer.weight == 0).sum())
    3
    >>> layer = finalize(layer)
    >>> get_mask(layer, "weight") is None
    True

Tied weights (one ``Parameter`` held by several modules) must be masked on every holder, with one
shared :class:`Mask`; :func:`parameter_holders` finds them and :func:`apply_mask` accepts an existing
:class:`Mask` to share.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ModelError

__all__ = [
    "Mask", "apply_mask", "get_mask", "masked_parameters", "finalize", "underlying_tensor",
    "parameter_holders", "mask_module", "write_weight",
]


class Mask(nn.Module):
    """Parametrization that multiplies a tensor by a fixed boolean mask (``True`` keeps the entry).

    The mask is a ``bool`` buffer named ``mask`` with the tensor's shape, so it is saved in the state
    dict, moves with ``.to(device)`` and costs one byte per entry. It is a copy of ``mask`` unless
    ``copy=False``: then a contiguous boolean ``mask`` is adopted as is (the caller hands it over and
    must not change it afterwards), which saves a second copy of every mask while pruning.
    """

    def __init__(self, mask: torch.Tensor, *, copy: bool = True) -> None:
        super().__init__()
        values = mask.detach().to(torch.bool)
        self.register_buffer("mask", values.clone() if copy or not values.is_contiguous() else values)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return X * self.mask

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        # Called straight, without module hooks: a parametrization is arithmetic on a tensor, not a layer.
        # Global hooks (torch.utils.module_tracker, used by FlopCounterMode) see the stored Parameter as an
        # input that requires grad and fail under torch.inference_mode(), so a pruned model could not be
        # measured there; skipping them keeps every tool that works on the unpruned model working.
        return self.forward(X)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"shape={tuple(self.mask.shape)}, kept={kept}/{self.mask.numel()}"


def _parametrizations(module: nn.Module, name: str) -> nn.ModuleList | None:
    if not parametrize.is_parametrized(module, name):
        return None
    return module.parametrizations[name]


def mask_module(module: nn.Module, name: str) -> Mask | None:
    """The :class:`Mask` parametrizing ``module.<name>``, or None when it has none."""
    plist = _parametrizations(module, name)
    if plist is None:
        return None
    for item in plist:
        if isinstance(item, Mask):
            return item
    return None


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The boolean mask of ``module.<name>`` (``True`` = kept), or None when it is not masked."""
    found = mask_module(module, name)
    return None if found is None else found.mask


def underlying_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor behind ``module.<name>``: the parametrization's ``original`` or the parameter."""
    plist = _parametrizations(module, name)
    if plist is not None:
        return plist.original
    return getattr(module, name)


def write_weight(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.<name>`` as the module should see it, whether or not a :class:`Mask` holds it.

    ``module.weight.copy_(new)`` or ``module.weight.mul_(f)`` on a masked layer write into a temporary
    (the product ``original * mask`` computed on access) and change nothing. This writes ``value`` into
    the stored tensor instead; masked entries stay zero (the mask is kept and the stored value zeroed
    there), so a method may run after a pruning step without undoing it. For a plain parameter it is
    an in-place copy. No gradient is recorded.

    >>> layer = nn.Linear(4, 2)
    >>> _ = apply_mask(layer, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool))
    >>> write_weight(layer, "weight", torch.ones(2, 4))
    >>> layer.weight.sum().item()
    5.0
    """
    stored = underlying_tensor(module, name)
    if tuple(value.shape) != tuple(stored.shape):
        raise ModelError(f"write_weight: {type(module).__name__}.{name} has shape {tuple(stored.shape)}, "
                         f"the new value {tuple(value.shape)}")
    mask = get_mask(module, name)
    with torch.no_grad():
        stored.copy_(value if mask is None else value * mask)


def parameter_holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Map ``id`` of every stored parameter to all ``(module_name, module, param_name)`` holding it.

    Parametrized tensors are keyed by their ``original``, so a tied weight masked on one module is
    still recognised on the other. Modules inside parametrization containers are not listed.
    """
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        if ".parametrizations." in f".{module_name}." or module_name.endswith("parametrizations"):
            continue
        names = list(module._parameters)
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations.keys() if n not in names]
        for param_name in names:
            tensor = underlying_tensor(module, param_name)
            if tensor is None:
                continue
            entry = (module_name, module, param_name)
            bucket = holders.setdefault(id(tensor), [])
            if not any(m is module and p == param_name for _, m, p in bucket):
                bucket.append(entry)
    return holders


def apply_mask(module: nn.Module, name: str, mask: torch.Tensor | Mask, *, zero_stored: bool = True) -> Mask:
    """Mask ``module.<name>`` with ``mask`` (``True`` keeps); AND it into an existing mask.

    ``mask`` is a boolean tensor of the parameter's shape, or a :class:`Mask` to share (tied weights:
    pass the :class:`Mask` returned for the first holder when masking the others, so all holders use
    one mask). The stored values of pruned entries are zeroed too, so the saved ``original`` is sparse;
    ``zero_stored=False`` leaves them for the caller to zero (``original.mul_(mask)``) once it is sure,
    so taking the mask off again restores the tensor without a copy of its values.
    Returns the :class:`Mask` now in place.
    """
    shared = mask if isinstance(mask, Mask) else None
    values = shared.mask if shared is not None else mask
    tensor = underlying_tensor(module, name)
    if tensor is None:
        raise ModelError(f"{type(module).__name__} has no tensor {name!r} to mask")
    if tuple(values.shape) != tuple(tensor.shape):
        raise ModelError(
            f"mask of shape {tuple(values.shape)} does not fit {type(module).__name__}.{name} of shape "
            f"{tuple(tensor.shape)}"
        )
    values = values.to(device=tensor.device, dtype=torch.bool)
    existing = mask_module(module, name)
    if existing is not None:
        if existing is not shared:
            existing.mask.logical_and_(values)
        target = existing
    else:
        target = shared if shared is not None else Mask(values)
        target.mask = target.mask.to(tensor.device)
        parametrize.register_parametrization(module, name, target)
        if isinstance(module, nn.RNNBase):
            _install_rnn_hook(module)
    if zero_stored:
        with torch.no_grad():
            tensor.mul_(target.mask)
    return target


def masked_parameters(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """Every masked tensor as ``(module_name, module, param_name, mask)``, in model order.

    A tied weight appears once per module that holds it (all with the same mask).
    """
    found = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(module):
            continue
        for param_name in list(module.parametrizations.keys()):
            mask = get_mask(module, param_name)
            if mask is not None:
                found.append((module_name, module, param_name, mask))
    return found


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask into its tensor and remove the parametrizations; returns ``model``.

    The result holds plain parameters with zeros where masks were (tied weights stay tied, as the
    same ``Parameter`` object). Other parametrizations stacked on a masked tensor are baked in too,
    since a mask cannot be removed from the middle of a chain without changing the values.
    """
    for _, module, param_name, _ in masked_parameters(model):
        if parametrize.is_parametrized(module, param_name):
            parametrize.remove_parametrizations(module, param_name, leave_parametrized=True)
        if isinstance(module, nn.RNNBase) and not parametrize.is_parametrized(module):
            _remove_rnn_hook(module)
    return model


def iter_masks(model: nn.Module) -> Iterator[Mask]:
    """Each distinct :class:`Mask` module of ``model`` once (shared masks are yielded once)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, Mask) and id(module) not in seen:
            seen.add(id(module))
            yield module


# ---------------------------------------------------------------------------------------- RNNs
# nn.RNNBase caches the weights it last used in ``_flat_weights``. With a parametrization those are
# computed (non-leaf) tensors, which ``copy.deepcopy`` refuses to copy; the engine and many training
# loops deep-copy models. Detaching the cache after each forward keeps the autograd graph of that call
# intact (it already holds the tensors it needs) and the next forward recomputes the weights anyway.

def _detach_flat_weights(module: nn.Module, args: tuple, output: object) -> None:
    module._flat_weights = [w.detach() if isinstance(w, torch.Tensor) else w for w in module._flat_weights]


def _install_rnn_hook(module: nn.RNNBase) -> None:
    if _detach_flat_weights not in module._forward_hooks.values():
        module.register_forward_hook(_detach_flat_weights)
    _detach_flat_weights(module, (), None)


def _remove_rnn_hook(module: nn.RNNBase) -> None:
    for key, hook in list(module._forward_hooks.items()):
        if hook is _detach_flat_weights:
            del module._forward_hooks[key]
    module._init_flat_weights()
