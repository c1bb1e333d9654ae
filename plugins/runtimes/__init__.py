"""Built-in runtimes for the ``deploy`` stage: ONNX Runtime, frozen TorchScript and ``torch.compile`` (inductor).

Each is a method plugin implementing ``deploy`` (entry points ``onnxruntime``, ``torchscript`` and
``inductor``), returns a :class:`torchslim.runtime.RuntimeModule` subclass that it registers as a module
kind, and says through ``available()`` why it cannot run on a machine.
"""

from __future__ import annotations

from .inductor import Inductor, InductorModule
from .onnxruntime import OnnxRuntime, OnnxRuntimeModule
from .options import InductorOptions, OnnxRuntimeOptions, RuntimeOptions, TorchScriptOptions
from .torchscript import TorchScript, TorchScriptModule

__all__ = ["Inductor", "InductorModule", "InductorOptions", "OnnxRuntime", "OnnxRuntimeModule", "OnnxRuntimeOptions",
           "RuntimeOptions", "TorchScript", "TorchScriptModule", "TorchScriptOptions"]
