"""Reading and editing a model's module tree: its device, fingerprint, private copies, submodule swaps.

One home for what every part of torchslim (engine, measurement, save/load, distributed training,
plugins) needs to know about or do to an ``nn.Module`` as a whole.
"""

from __future__ import annotations

import copy
import hashlib
import itertools

import torch
from torch import nn
from torch.nn.utils import parametrize


def model_device(model: nn.Module, default: torch.device | str | None = "cpu") -> torch.device | None:
    """The device of the model's first parameter (else first buffer); ``default`` for a tensorless model."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None if default is None else torch.device(default)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's state dict."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def own_parametrized_classes(model: nn.Module) -> nn.Module:
    """Give every parametrized module of ``model`` a private copy of its generated class; returns ``model``.

    ``copy.deepcopy`` shares the generated ``Parametrized*`` classes between original and copy, and
    registering or removing a parametrization edits that class, which would change the original too.
    Call this on a copy before changing its parametrizations.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return model

def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with ``model``, parametrization classes included.

    ``copy.deepcopy`` of a parametrized module shares torch's generated ``Parametrized*`` class with
    the original, so finalizing masks on the copy would break the caller's model.
    """
    return own_parametrized_classes(copy.deepcopy(model))


def replace_submodule(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at the dotted ``path`` of ``model``; returns the (new, for ``path == ""``) root.

    Raises ``AttributeError`` naming the missing parent when ``path``'s parent does not exist.
    """
    if path == "":
        return module
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)
    return model


def is_module_kind(module: nn.Module) -> bool:
    """True for modules of a registered kind: their class offers ``torchslim_spec`` and ``from_torchslim_spec``."""
    cls = parametrize.type_before_parametrizations(module)
    return callable(getattr(cls, "torchslim_spec", None)) and callable(getattr(cls, "from_torchslim_spec", None))


def module_kind_types(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The registered-kind classes present in ``model`` (steps skip what is inside them)."""
    return tuple({type(m) for m in model.modules() if is_module_kind(m)})
