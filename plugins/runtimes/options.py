"""The settings of the built-in runtimes (one pydantic model each, shown in the recipe reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RuntimeOptions(BaseModel):
    """Settings every built-in runtime shares."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="fp32 runs the model as it is; int8 quantizes weights and activations (static, "
                            "calibrated on train_data) so the runtime's int8 kernels run")
    calibration_batches: int = Field(
        8, ge=1, description="train_data batches that calibrate int8 activation ranges (the example inputs "
                             "when there is no train_data)")
    max_error: float | None = Field(
        None, gt=0, description="fail the step when the artifact's outputs on the example inputs differ from the "
                                "model's by more than this, relative to their norm (default: 1e-3 for fp32, "
                                "no limit for int8, whose error is reported)")


class OnnxRuntimeOptions(RuntimeOptions):
    """ONNX Runtime on the CPU: the model exported to ONNX, optionally quantized to int8 QDQ."""

    quantization: Literal["static", "dynamic"] = Field(
        "static", description="int8 only: static (activation ranges calibrated once; convolutions and Linear "
                              "layers run int8) or dynamic (ranges per batch; Linear/MatMul only, no calibration "
                              "data needed; for transformers and Linear-heavy models)")
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="int8 only: activation type. uint8 (with int8 weights, U8S8) is what x86's "
                             "AVX2/AVX-512 int8 dot-product instructions (vpmaddubsw, VNNI vpdpbusd) take directly; "
                             "int8 activations (S8S8) are converted first on x86")
    quantize_ops: Literal["auto", "compute", "all"] = Field(
        "auto", description="int8 static only: which ops run int8. 'compute': convolutions and matrix products "
                            "(Conv, MatMul, Gemm); 'all': every op ONNX Runtime can quantize (adds, pools, "
                            "activations too: fewer conversions in CNNs); 'auto': 'compute' for models with "
                            "attention layers (their masks and softmax wreck a calibrated range), else 'all'")
    per_channel: bool = Field(True, description="int8 only: one weight scale per output channel (more accurate)")
    reduce_range: bool | Literal["auto"] = Field(
        "auto", description="int8 only: 7-bit weights, which avoid the saturation of U8S8 products on CPUs without "
                            "VNNI (AVX2's vpmaddubsw adds pairs in 16 bits) at a little precision; 'auto': on when "
                            "the CPU deploying the model has no VNNI (avx512_vnni, avx_vnni, amx_int8)")
    opset: int = Field(17, ge=13, description="ONNX opset the model is exported with")
    threads: int | None = Field(None, ge=1, description="intra-op threads of the session (default: torch's)")


class TorchScriptOptions(BaseModel):
    """Frozen TorchScript: traced, frozen (weights as constants, batch norms folded), optimized for inference."""

    model_config = ConfigDict(extra="forbid")

    max_error: float | None = Field(
        None, gt=0, description="fail the step when the artifact's outputs differ from the model's by more than "
                                "this, relative to their norm (default 1e-3)")


class InductorOptions(RuntimeOptions):
    """``torch.compile`` with the inductor backend on a ``torch.export`` program; int8 through PT2E."""

    mode: Literal["default", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode (autotuning compiles longer for faster kernels)")
