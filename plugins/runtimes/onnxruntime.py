"""ONNX Runtime on the CPU: fp32, static int8 (QDQ, per-channel, calibrated) and dynamic int8.

The model is exported with the TorchScript-based ONNX exporter (a dynamic batch dimension, so any
batch size runs) and, for int8, quantized by ``onnxruntime.quantization``. Static int8 stores QDQ
pairs (QuantizeLinear/DequantizeLinear around each quantized op), which ONNX Runtime fuses into int8
convolutions and matrix products; activations are uint8 and weights int8 by default (U8S8), the form
x86's int8 dot-product instructions take directly.
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim.batches import tensors_in
from torchslim.cpu import has_vnni
from torchslim.runtime import (
    RuntimeModule,
    calibration_inputs,
    checked_result,
    has_attention,
    positional,
    prepared,
    spec_for,
)

from .options import OnnxRuntimeOptions


def _threads(spec: dict[str, Any]) -> int:
    return int(spec.get("threads") or torch.get_num_threads())


class OnnxRuntimeModule(RuntimeModule):
    """A model running in an ONNX Runtime CPU session (artifact: ``model.onnx``)."""

    runtime = "onnxruntime"

    def load_artifact(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _threads(self.spec)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(self.files["model.onnx"], options, providers=["CPUExecutionProvider"])
        self._names = [item.name for item in self._session.get_inputs()]

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: tensor.numpy() for name, tensor in zip(self._names, inputs)}
        return [torch.from_numpy(array) for array in self._session.run(None, feeds)]


def export(model: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int) -> bytes:
    """``model`` exported to ONNX with a dynamic batch dimension on every input and output."""
    with torch.no_grad():
        outputs = model(*inputs)
    count = len(list(tensors_in(outputs)))
    input_names = [f"input{i}" for i in range(len(inputs))]
    output_names = [f"output{i}" for i in range(count)]
    axes = {name: {0: "batch"} for name in input_names + output_names}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporters' deprecation notes are not the user's to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model, inputs, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


class _Reader:
    """The calibration batches as an ``onnxruntime.quantization.CalibrationDataReader``."""

    def __init__(self, names: list[str], batches: list[tuple[torch.Tensor, ...]]) -> None:
        self._feeds = iter([{n: t.numpy() for n, t in zip(names, batch)} for batch in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


#: The ops static int8 quantizes with ``quantize_ops: compute``.
COMPUTE_OPS = ["Conv", "MatMul", "Gemm"]


def quantize(fp32: bytes, options: OnnxRuntimeOptions, batches: list[tuple[torch.Tensor, ...]],
             compute_only: bool = False, reduce_range: bool = False) -> bytes:
    """The int8 form of the ONNX model ``fp32``: static QDQ calibrated on ``batches`` (only the
    :data:`COMPUTE_OPS` when ``compute_only``), or dynamic; 7-bit weights with ``reduce_range``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    activation = QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as scratch:
        source, ready, target = (Path(scratch) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        try:  # shape inference and graph clean-up let the quantizer see every tensor it may quantize
            quant_pre_process(str(source), str(ready), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - quantizing the plain export still works, a little less fused
            ready = source
        if options.quantization == "dynamic":
            quantize_dynamic(str(ready), str(target), weight_type=QuantType.QInt8, per_channel=options.per_channel,
                             reduce_range=reduce_range)
        else:
            import onnx

            names = [item.name for item in onnx.load(str(ready), load_external_data=False).graph.input]
            quantize_static(str(ready), str(target), _Reader(names, batches), quant_format=QuantFormat.QDQ,
                            per_channel=options.per_channel, reduce_range=reduce_range,
                            activation_type=activation, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=COMPUTE_OPS if compute_only else None)
        return target.read_bytes()


class OnnxRuntime:
    """Deploy to ONNX Runtime (CPU): ``- deploy: {method: onnxruntime, precision: int8}``."""

    Options = OnnxRuntimeOptions
    changes_outputs = False

    @staticmethod
    def available() -> str | None:
        missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        return f"pip install torchslim[onnx] ({', '.join(missing)} missing)" if missing else None

    @torchslim.hookimpl
    def deploy(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        options: OnnxRuntimeOptions = step.options
        where = f"deploy/{step.method}"
        reason = self.available()
        if reason is not None:
            raise torchslim.PluginError(f"{where}: ONNX Runtime is not installed: {reason}")
        inputs = positional(context.example_inputs, where)
        source = prepared(model)
        data = export(source, inputs, options.opset)
        int8 = options.precision == "int8"
        reduce_range = (not has_vnni() if options.reduce_range == "auto" else options.reduce_range) if int8 else None
        if int8:
            batches = calibration_inputs(context, options.calibration_batches, where)
            compute_only = options.quantize_ops == "compute" or (options.quantize_ops == "auto" and has_attention(source))
            data = quantize(data, options, batches if options.quantization == "static" else [], compute_only,
                            bool(reduce_range))
        spec = spec_for(source, inputs, precision=options.precision, threads=options.threads,
                        quantization=options.quantization if int8 else None, reduce_range=reduce_range)
        artifact = OnnxRuntimeModule(spec, {"model.onnx": data})
        return checked_result(artifact, source, inputs, options, step.method)

    @torchslim.hookimpl
    def register_module_kinds(self, register: Any) -> None:
        register(OnnxRuntimeModule)
