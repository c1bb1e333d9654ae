"""The ``openvino`` deploy method: convert, optionally quantize with NNCF, compile for the CPU."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import torchslim
from torchslim.runtime import (
    RuntimeModule,
    calibration_inputs,
    checked_result,
    has_attention,
    positional,
    prepared,
    spec_for,
)


class OpenVINOOptions(BaseModel):
    """Settings of the OpenVINO runtime."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="fp32 (the CPU plugin told not to drop to bf16) or int8 (NNCF post-training "
                            "quantization, calibrated on train_data)")
    calibration_batches: int = Field(8, ge=1, description="train_data batches NNCF calibrates int8 on")
    model_type: Literal["auto", "transformer", "default"] = Field(
        "auto", description="int8 only: NNCF's quantization scheme. 'transformer' keeps softmax, normalization "
                            "and attention masks in float (NNCF's ModelType.TRANSFORMER); 'default' quantizes "
                            "every op NNCF can; 'auto': 'transformer' for models with attention layers")
    threads: int | None = Field(None, ge=1, description="inference threads (default: torch's)")
    max_error: float | None = Field(
        None, gt=0, description="fail the step when the artifact's outputs differ from the model's by more "
                                "than this, relative to their norm (default: 1e-3 for fp32, no limit for int8)")


class OpenVINOModule(RuntimeModule):
    """A model compiled by OpenVINO for the CPU (artifact: ``model.xml`` and ``model.bin``)."""

    runtime = "openvino"

    def load_artifact(self) -> None:
        import numpy as np
        import openvino as ov

        core = ov.Core()
        weights = ov.Tensor(np.frombuffer(self.files["model.bin"], dtype=np.uint8).copy())
        model = core.read_model(model=self.files["model.xml"].decode("utf-8"), weights=weights)
        config = {"INFERENCE_NUM_THREADS": int(self.spec.get("threads") or torch.get_num_threads()),
                  "PERFORMANCE_HINT": "LATENCY"}
        if self.spec.get("precision") == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        results = self._request.infer([t.numpy() for t in inputs])
        return [torch.from_numpy(results[output].copy()) for output in self._compiled.outputs]

    def __getstate__(self) -> dict:  # the compiled model is rebuilt from the files, never pickled
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        state.pop("_request", None)
        return state


def convert(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """``model`` as an OpenVINO model with a dynamic batch dimension."""
    import openvino as ov

    shapes = [ov.PartialShape([-1, *t.shape[1:]]) for t in inputs]
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=inputs, input=shapes)
    return converted


def quantized(ov_model: Any, batches: list[tuple[torch.Tensor, ...]], transformer: bool = False) -> Any:
    """``ov_model`` quantized to int8 by NNCF on ``batches`` (with NNCF's transformer scheme when asked)."""
    import nncf

    data = nncf.Dataset([[t.numpy() for t in batch] for batch in batches])
    scheme = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    return nncf.quantize(ov_model, data, subset_size=sum(batch[0].shape[0] for batch in batches), **scheme)


def serialized(ov_model: Any) -> dict[str, bytes]:
    """``model.xml`` and ``model.bin`` of ``ov_model`` (weights kept in their own precision)."""
    import tempfile
    from pathlib import Path

    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as scratch:
        xml = Path(scratch) / "model.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        return {"model.xml": xml.read_bytes(), "model.bin": xml.with_suffix(".bin").read_bytes()}


class OpenVINO:
    """Deploy to OpenVINO's CPU runtime: ``- deploy: {method: openvino, precision: int8}``."""

    Options = OpenVINOOptions

    @staticmethod
    def available() -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "pip install torchslim-openvino (openvino missing)"
        return None

    @torchslim.hookimpl
    def deploy(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        options: OpenVINOOptions = step.options
        where = f"deploy/{step.method}"
        if options.precision == "int8" and importlib.util.find_spec("nncf") is None:
            raise torchslim.PluginError(f"{where}: precision int8 needs NNCF: pip install nncf")
        inputs = positional(context.example_inputs, where)
        source = prepared(model)
        ov_model = convert(source, inputs)
        if options.precision == "int8":
            transformer = options.model_type == "transformer" or (options.model_type == "auto" and has_attention(source))
            ov_model = quantized(ov_model, calibration_inputs(context, options.calibration_batches, where), transformer)
        spec = spec_for(source, inputs, precision=options.precision, threads=options.threads)
        artifact = OpenVINOModule(spec, serialized(ov_model))
        return checked_result(artifact, source, inputs, options, step.method)

    @torchslim.hookimpl
    def register_module_kinds(self, register: Any) -> None:
        register(OpenVINOModule)
