"""The int8 arithmetic every module kind shares: per-channel quantization and PyTorch's dynamic kernels.

Weights are quantized symmetrically per output channel (``w ~= q * scale[row]``, ``q`` in [-127, 127],
zero point 0, so pruned zeros stay exactly zero). :func:`prepack` turns such an ``(int8, scale)`` pair
into the packed weight of PyTorch's int8 dynamic kernels (FBGEMM / x86 / oneDNN), which
``Int8Linear`` and the recurrent kinds call; the packed weight is a cache, never stored.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Sequence

import torch
from torch import nn

QMAX = 127


# ------------------------------------------------------------------------------------------- maths
def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` (output channels on dim 0) to ``(int8 tensor, float32 scale per channel)``.

    >>> q, s = quantize_per_channel(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> q.tolist(), s.tolist()[1]
    ([[64, -127], [0, 0]], 1.0)
    """
    w = weight.detach().to(torch.float32)
    flat = w.reshape(w.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    # an all-zero channel (pruned away) gets scale 1 so nothing divides by zero; its values stay 0
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(flat / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` broadcast over the output-channel dim 0, in ``dtype``."""
    return q.to(dtype) * scale.to(dtype).reshape((-1,) + (1,) * (q.dim() - 1))


@functools.lru_cache(maxsize=1)
def dynamic_kernel() -> str | None:
    """The quantized engine whose int8 dynamic Linear kernel runs here (``"x86"``, ``"fbgemm"``, ...), or None."""
    try:
        weight = torch.randn(4, 8)  # works in and out of inference mode: no version counter is read
        packed = prepack(*quantize_per_channel(weight))
        torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, True)
    except Exception:  # noqa: BLE001 - any failure means "use the dequantized path"
        return None
    return str(torch.backends.quantized.engine)


def prepack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> Any:
    """The int8 dynamic kernels' packed weight for ``q * scale`` (per output channel) and ``bias``."""
    with warnings.catch_warnings():  # quantized-tensor constructors warn about their future; we only feed the kernel
        warnings.simplefilter("ignore")
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(q.cpu(), scale.double().cpu(), zero, 0)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float().cpu())


def _register_flop_formula() -> None:
    """Teach ``torch.utils.flop_counter`` the dynamic kernel: 2 x input elements x output features."""
    op = getattr(getattr(torch.ops, "quantized", None), "linear_dynamic", None)
    try:
        from torch.utils.flop_counter import flop_registry, register_flop_formula
    except ImportError:  # pragma: no cover - very old torch
        return
    if op is None or op in flop_registry or getattr(op, "default", None) in flop_registry:
        return

    def linear_dynamic_flop(x_shape: Sequence[int], *args: Any, out_shape: Sequence[int] | None = None,
                            **kwargs: Any) -> int:
        return 2 * math.prod(x_shape) * int(out_shape[-1])

    register_flop_formula(op)(linear_dynamic_flop)


_register_flop_formula()




def int8_parameter(shape: Sequence[int]) -> nn.Parameter:
    """A frozen int8 ``nn.Parameter`` of zeros (counted as a parameter, stored as int8, never trained)."""
    return nn.Parameter(torch.zeros(tuple(shape), dtype=torch.int8), requires_grad=False)


def weight_of(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor ``name`` of ``module`` as the forward pass sees it (pruning masks applied)."""
    return getattr(module, name).detach()


def version_key(tensors: Sequence[torch.Tensor | None]) -> tuple:
    """Identifies the contents of ``tensors`` for a packed-weight cache: storage and in-place version.

    Inference tensors (made under :func:`torch.inference_mode`) track no version; they are keyed by
    storage only.
    """
    return tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors if t is not None)
