"""Which layers ``svd`` can factorize, into which forms, and which it must leave (their parent reads the weight)."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

#: Every factorization form: ``linear`` (two Linears), ``weight`` (KxK with r filters, then 1x1; AIMET's
#: "weight SVD") and ``spatial`` (Kx1 then 1xK; Jaderberg et al. 2014).
FORMS = ("linear", "weight", "spatial")

def applicable_forms(layer: nn.Module) -> tuple[list[str], str | None]:
    """The forms that can factorize ``layer``, or ``([], reason)`` when none can."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return [], "no floating-point weight to factorize"
    if type(layer) is nn.Linear or (isinstance(layer, nn.Linear) and weight.dim() == 2):
        return ["linear"], None
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups > 1 and layer.groups == layer.in_channels:
            return [], (f"depthwise conv (groups={layer.groups} = in_channels): each filter sees one "
                        f"channel, so no factorization reduces its MACs")
        forms = ["weight"]
        if isinstance(layer, nn.Conv2d) and min(layer.kernel_size) > 1:
            forms.append("spatial")
        return forms, None
    return [], f"{type(layer).__name__} is not supported (Linear, Conv1d and Conv2d are)"


#: Containers whose forward reads a child layer's ``.weight`` itself instead of calling the child, so the
#: child cannot be swapped for factor modules: parent class -> (child names, how the parent reads them).
WEIGHT_READERS: dict[type[nn.Module], tuple[tuple[str, ...], str]] = {
    nn.TransformerEncoderLayer: (("linear1", "linear2"), "its fused inference fast path"),
    nn.TransformerDecoderLayer: (("linear1", "linear2"), "its fused inference fast path"),
    nn.MultiheadAttention: (("out_proj",), "F.multi_head_attention_forward"),
}


def read_by_parent(model: nn.Module, name: str) -> str | None:
    """Why the layer ``name`` of ``model`` cannot be replaced because its parent reads its weight, or None.

    ``nn.TransformerEncoderLayer``/``DecoderLayer`` hand ``linear1.weight`` and ``linear2.weight`` to a
    fused kernel, and ``nn.MultiheadAttention`` hands ``out_proj.weight`` to
    ``F.multi_head_attention_forward``: a factorized replacement has no single ``weight`` to give.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    for cls, (children, how) in WEIGHT_READERS.items():
        if isinstance(parent, cls) and child in children:
            return (f"its parent {type(parent).__name__} reads {child}.weight directly ({how}); factor "
                    f"modules have no single weight, so the layer is left as is")
    parts = name.split(".")
    for depth in range(len(parts)):  # an ancestor's forward may read it too (ViTModel reads the patch conv's dtype)
        holder = model.get_submodule(".".join(parts[:depth])) if depth else model
        if f"self.{'.'.join(parts[depth:])}.weight" in _forward_source(type(holder)):
            return (f"{type(holder).__name__}.forward reads {'.'.join(parts[depth:])}.weight directly; factor "
                    f"modules have no single weight, so the layer is left as is")
    return None


@functools.lru_cache(maxsize=None)
def _forward_source(cls: type) -> str:
    """The source of ``cls.forward`` ('' when it cannot be read, e.g. a compiled or built-in module)."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""
