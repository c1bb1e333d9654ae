"""Frozen TorchScript: traced, frozen (weights as constants, batch norms folded) and optimized for inference.

The artifact is the frozen archive (``model.torchscript``); loading it applies
``torch.jit.optimize_for_inference`` (oneDNN's fused convolutions on x86), which is done on load
because the optimized form is tied to the machine. Tracing records one path through the model:
data-dependent control flow is fixed to what the example inputs took.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim.batches import tensors_in
from torchslim.runtime import RuntimeModule, checked_result, positional, prepared, spec_for

from .options import TorchScriptOptions


class TorchScriptModule(RuntimeModule):
    """A model running as a frozen, inference-optimized TorchScript module (artifact: ``model.torchscript``)."""

    runtime = "torchscript"

    def load_artifact(self) -> None:
        frozen = torch.jit.load(io.BytesIO(self.files["model.torchscript"]), map_location="cpu")
        # kept outside the module tree: the artifact's weights are not this module's parameters
        self.__dict__["_script"] = torch.jit.optimize_for_inference(frozen.eval())

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(tensors_in(self.__dict__["_script"](*inputs)))


def freeze(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """``model`` traced on ``inputs`` and frozen, as TorchScript archive bytes."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        frozen = torch.jit.freeze(torch.jit.trace(model, inputs).eval())
    buffer = io.BytesIO()
    torch.jit.save(frozen, buffer)
    return buffer.getvalue()


class TorchScript:
    """Deploy as frozen TorchScript: ``- deploy: {method: torchscript}``."""

    Options = TorchScriptOptions

    @staticmethod
    def available() -> str | None:
        return None if hasattr(torch.jit, "freeze") else f"torch {torch.__version__} has no torch.jit.freeze"

    @torchslim.hookimpl
    def deploy(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        where = f"deploy/{step.method}"
        inputs = positional(context.example_inputs, where)
        source = prepared(model)
        try:
            data = freeze(source, inputs)
        except Exception as exc:
            raise torchslim.StepError(f"{where}: torch.jit.trace/freeze failed for {type(model).__name__}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        artifact = TorchScriptModule(spec_for(source, inputs, precision="fp32"), {"model.torchscript": data})
        return checked_result(artifact, source, inputs, step.options, step.method)

    @torchslim.hookimpl
    def register_module_kinds(self, register: Any) -> None:
        register(TorchScriptModule)
