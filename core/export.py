"""Export a compressed model to ONNX (checked with ONNX Runtime) or TorchScript (by tracing).

Both work on a copy of the model with its pruning masks baked in (:func:`torchslim.masks.finalize`)
and in eval mode, so the caller's model is not changed, and both write atomically (a temporary file
renamed into place). ONNX needs the optional extra: ``pip install torchslim[onnx]``.

>>> export_onnx(model, (x,), "model.onnx")          # doctest: +SKIP
>>> export_torchscript(model, (x,), "model.pt")     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import masks
from .batches import as_inputs, call_model, tensors_in
from .errors import ExportError
from .io.atomic import replace_file_atomically
from .surgery import own_parametrized_classes

__all__ = ["ExportError", "export_onnx", "export_torchscript"]


def _inputs(example_inputs: Any) -> tuple | dict:
    """Positional inputs as a tuple, keyword inputs (a dict, a ``BatchEncoding``) as a dict."""
    return as_inputs(example_inputs)


def _args(inputs: tuple | dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for the exporters: keyword inputs go by name."""
    return ((), dict(inputs)) if isinstance(inputs, dict) else (inputs, {})


def _prepare(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its masks baked in, in eval mode; ``model`` itself is not touched."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"model must be an nn.Module, got {type(model).__name__}")
    replica = own_parametrized_classes(copy.deepcopy(model))  # so finalizing cannot touch ``model``
    return masks.finalize(replica).eval()


def _compare(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, atol: float, what: str) -> None:
    if len(got) != len(expected):
        raise ExportError(f"{what} returns {len(got)} outputs, the model returns {len(expected)}")
    for index, (a, b) in enumerate(zip(got, expected)):
        a = a.to(b.dtype) if a.dtype != b.dtype and b.is_floating_point() else a
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"{what}: output {index} has shape {tuple(a.shape)}, the model's {tuple(b.shape)}")
        if not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            worst = float((a.double() - b.double()).abs().max())
            raise ExportError(f"{what}: output {index} differs from PyTorch's by up to {worst:.3g} "
                              f"(allowed: atol={atol}, rtol={rtol})")


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnx/onnxruntime"
        raise ExportError(f"ONNX export needs the optional packages onnx and onnxruntime ({missing} is not "
                          f"installed): pip install torchslim[onnx]") from None
    return onnx, onnxruntime


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, check: bool = True, *,
                opset: int | None = None, rtol: float = 1e-4, atol: float = 1e-5) -> Path:
    """Export ``model`` to an ONNX file at ``path``; with ``check``, verify it with ONNX Runtime.

    ``example_inputs`` is a tensor, a tuple of the model's positional inputs, or a dict of keyword
    inputs such as a tokenizer's ``BatchEncoding`` (ONNX inputs then take the keywords' names; shapes
    are fixed to these). With ``check`` the file is validated by ``onnx.checker`` and run on ONNX Runtime's CPU
    provider, and every output must match PyTorch's within ``atol + rtol * |expected|``, else an
    :class:`ExportError` gives the largest difference. Returns the path written.
    """
    onnx, onnxruntime = _require_onnx()
    prepared, inputs = _prepare(model), _inputs(example_inputs)
    with torch.no_grad():
        expected = [t.detach().cpu() for t in tensors_in(call_model(prepared, inputs))]
    args, kwargs = _args(inputs)
    if kwargs:  # ONNX inputs named as the forward's keywords, in the order given
        named = [(k, v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        input_names, tensor_inputs = [k for k, _ in named], [v for _, v in named]
    else:
        tensor_inputs = [t for t in inputs if isinstance(t, torch.Tensor)]
        input_names = [f"input{i}" for i in range(len(tensor_inputs))]
    output_names = [f"output{i}" for i in range(len(expected))]

    def write(target: Path) -> None:
        # torch's deprecation notes about its exporters are not the user's to act on; TracerWarnings
        # (data-dependent control flow) are, so they still show
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                torch.onnx.export(prepared, args, str(target), kwargs=kwargs or None, input_names=input_names,
                                  output_names=output_names, opset_version=opset, dynamo=False)
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if not check:
            return
        try:
            onnx.checker.check_model(str(target))
        except Exception as exc:
            raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        given = dict(zip(input_names, tensor_inputs))
        feeds = {spec.name: given[spec.name].detach().cpu().numpy() for spec in session.get_inputs()}
        got = [torch.from_numpy(array) for array in session.run(None, feeds)]
        _compare(got, expected, rtol, atol, "ONNX Runtime")

    return replace_file_atomically(write, Path(path))


def export_torchscript(model: nn.Module, example_inputs: Any, path: str | os.PathLike, check: bool = True, *,
                       freeze: bool = False, rtol: float | None = None, atol: float | None = None) -> Path:
    """Trace ``model`` with :func:`torch.jit.trace` on ``example_inputs`` and save it at ``path``.

    With ``freeze`` the traced module is frozen (:func:`torch.jit.freeze`): weights become constants
    and batch norms fold into the convs before them, the inference-only form to ship to a CPU (load
    it with ``torch.jit.load``, then ``torch.jit.optimize_for_inference`` for oneDNN's fused kernels).
    With ``check`` the saved module's outputs must match the model's within ``atol + rtol * |expected|``
    (default 1e-6 and 1e-5; frozen, whose folded batch norms round differently, 1e-5 and 1e-4).
    Tracing records one path through the model: data-dependent control flow is frozen to what the
    example inputs took. Returns the path written.
    """
    prepared, inputs = _prepare(model), _inputs(example_inputs)
    rtol = rtol if rtol is not None else (1e-4 if freeze else 1e-5)
    atol = atol if atol is not None else (1e-5 if freeze else 1e-6)

    def write(target: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():  # see export_onnx about warnings
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                args, kwargs = _args(inputs)
                traced = (torch.jit.trace(prepared, example_kwarg_inputs=kwargs, strict=False) if kwargs
                          else torch.jit.trace(prepared, inputs))
            except Exception as exc:
                raise ExportError(f"torch.jit.trace failed for {type(model).__name__}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if freeze:
                traced = torch.jit.freeze(traced)
            if check:
                expected = [t.detach().cpu() for t in tensors_in(call_model(prepared, inputs))]
                got = [t.detach().cpu() for t in tensors_in(call_model(traced, inputs))]
                _compare(got, expected, rtol, atol, "the frozen TorchScript module" if freeze
                         else "the traced TorchScript module")
            traced.save(str(target))

    return replace_file_atomically(write, Path(path))
