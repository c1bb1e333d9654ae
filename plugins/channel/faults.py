"""Say which module or op broke channel pruning, in words a user can act on.

Torch-Pruning traces one forward pass and follows autograd nodes. Code it cannot see through (a
hard-coded ``view(-1, 1024)``, an ``einsum`` with a parameter, a shape check, a layer it has no rule
for) shows up in one of three places: while tracing, while removing channels, or when the pruned
model runs. Each is turned into a :class:`~torchslim.ModelError` that names the module, the op or
the user's source line, and the workaround (keep that layer's channels with ``ignore``).
"""

from __future__ import annotations

import linecache
import os
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim.batches import call_model
from torchslim.errors import ModelError
from torchslim.measure import eval_mode

#: Where the fault is never the user's code: torch itself, torchslim and its plugins (Torch-Pruning
#: is recognised by its package folder name, so it need not be importable here).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in (torch.__file__, torchslim.__file__, __file__)
)
_TP_DIR = f"{os.sep}torch_pruning{os.sep}"


def _is_library(filename: str) -> bool:
    name = os.path.abspath(filename)
    return name.startswith(_LIBRARY_DIRS) or _TP_DIR in name


def user_frame(tb: TracebackType | None) -> str | None:
    """``file:line in func: code`` of the deepest traceback frame outside torch and torchslim."""
    found = None
    for frame in traceback.extract_tb(tb):
        if not _is_library(frame.filename):
            found = frame
    if found is None:
        return None
    code = (found.line or linecache.getline(found.filename, found.lineno)).strip()
    return f"{os.path.basename(found.filename)}:{found.lineno} in {found.name}: `{code}`"


def _kind(module: Any) -> str:
    return type(module).__name__


def describe_tracer_fault(exc: BaseException, names: dict[int, str]) -> str:
    """Name the module or autograd op Torch-Pruning was handling when ``exc`` was raised.

    Reads the local variables of Torch-Pruning's frames (deepest first): a dependency being applied
    (``dep``), a layer being cut (``layer``), a graph node (``node``) or an autograd function
    (``grad_fn``). ``names`` maps ``id(module)`` to its qualified name.
    """
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        if _TP_DIR in tb.tb_frame.f_code.co_filename:
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local = frame.f_locals
        dep = local.get("dep")
        target = getattr(getattr(dep, "target", None), "module", None)
        if isinstance(target, nn.Module) and id(target) in names:
            action = getattr(getattr(dep, "handler", None), "__name__", "pruning")
            return f"module {names[id(target)]!r} ({_kind(target)}, while running {action})"
        for key in ("layer", "module", "m"):
            module = local.get(key)
            if isinstance(module, nn.Module) and id(module) in names:
                return f"module {names[id(module)]!r} ({_kind(module)})"
        node = local.get("node")
        module = getattr(node, "module", None)
        if isinstance(module, nn.Module) and id(module) in names:
            return f"module {names[id(module)]!r} ({_kind(module)})"
        grad_fn = local.get("grad_fn")
        if grad_fn is not None and hasattr(grad_fn, "name"):
            return f"autograd op {grad_fn.name()}"
    return "an op of the model's forward"


def tracer_error(exc: BaseException, names: dict[int, str], phase: str, where: str) -> ModelError:
    """A :class:`ModelError` for a failure inside Torch-Pruning while ``phase`` (tracing/removing)."""
    culprit = describe_tracer_fault(exc, names)
    line = user_frame(exc.__traceback__)
    at = f" (model code at {line})" if line else ""
    return ModelError(
        f"{where}: Torch-Pruning failed while {phase} at {culprit}{at}: {type(exc).__name__}: {exc}. "
        f"This model uses a layer or op its dependency graph cannot follow. Workaround: keep that "
        f"module's channels by adding its name to 'ignore' (or to targets.exclude), or restrict "
        f"'targets' to the layers that can be pruned."
    )


@dataclass
class _Tracker:
    """Forward hooks that remember which modules were running and which weight layer ran last."""

    names: dict[int, str]
    active: list[str] = field(default_factory=list)
    last_layer: str | None = None

    def pre(self, module: nn.Module, args: Any) -> None:
        self.active.append(self.names[id(module)])

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.active:
            self.active.pop()
        if isinstance(module, LAYER_TYPES):
            self.last_layer = self.names[id(module)]


#: Layers whose channels Torch-Pruning changes (the candidates a failure is traced back to).
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.RNNBase, nn.Embedding,
)


def run_pruned(model: nn.Module, inputs: tuple, where: str,
               describe_layer: Any = lambda name: "") -> Any:
    """Run the pruned ``model`` once in eval mode; a failure becomes a :class:`ModelError` naming the spot.

    ``describe_layer(name)`` adds what pruning did to a layer (e.g. ``"out channels 16 -> 8"``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    tracker = _Tracker(names)
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(tracker.pre))
        handles.append(module.register_forward_hook(tracker.post))
    try:
        with eval_mode(model), torch.no_grad():
            return call_model(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here was caused by removed channels
        inside = tracker.active[-1] if tracker.active else ""
        inside_text = f"module {inside!r} ({_kind(model.get_submodule(inside))})" if inside else (
            f"the top-level forward of {_kind(model)}")
        line = user_frame(exc.__traceback__)
        at = f", called from {line}" if line else ""
        last = tracker.last_layer
        if last is not None:
            change = describe_layer(last)
            hint = (f" The last layer that ran before the failure is {last!r}"
                    f"{' (' + change + ')' if change else ''}; keep its channels with ignore: [{last!r}] "
                    f"(or targets.exclude), or compute the size from the tensor (x.flatten(1) instead of "
                    f"x.view(-1, 1024)).")
        else:
            hint = " Keep the channels of the layers feeding that spot with 'ignore' (or targets.exclude)."
        raise ModelError(
            f"{where}: the pruned model fails on example_inputs in {inside_text}{at}: "
            f"{type(exc).__name__}: {exc}. The forward depends on a channel count Torch-Pruning cannot "
            f"see (a hard-coded view/reshape size, an einsum or matmul with a raw tensor, a shape "
            f"check).{hint}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
