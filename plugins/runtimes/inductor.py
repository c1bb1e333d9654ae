"""``torch.compile`` with inductor: a ``torch.export`` program compiled to C++/OpenMP kernels for this CPU.

fp32 compiles the exported model with weights frozen into the kernels; int8 first quantizes it with
PT2E (``prepare_pt2e``, calibration on ``train_data``, ``convert_pt2e``) and the x86 inductor quantizer,
whose quantize/dequantize patterns inductor lowers to oneDNN int8 convolutions and matrix products.
The artifact is the exported (and, for int8, quantized) program, ``model.pt2``; it is compiled again
when loaded, since compiled kernels belong to the machine. Compiling needs a C++ compiler. The int8
program is fixed to the example inputs' batch size (PT2E's weight prepacking records it); other batch
sizes run in chunks of that size, the last one zero-padded.
"""

from __future__ import annotations

import io
import shutil
import warnings
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim.batches import tensors_in
from torchslim.runtime import RuntimeModule, calibration_inputs, checked_result, positional, prepared, spec_for

from .options import InductorOptions


def _pt2e() -> tuple[Any, Any, Any, Any]:
    """``(prepare_pt2e, convert_pt2e, X86InductorQuantizer, default config)`` from torchao or torch.ao."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torch.ao.quantization.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


#: Activation modules a model may call more than once (torchvision-style blocks reuse one ``self.relu``).
_STATELESS = {f"{c.__module__}.{c.__qualname__}" for c in (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)}


def without_dead_code(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph_module`` with the nodes whose results nothing reads removed, in place.

    ``torch.export`` keeps computations the outputs never read, such as BERT's pooler under a model that
    returns the token states; the x86 quantizer then meets a Linear + Tanh partition with no output node
    and fails (``IndexError`` in ``_get_output_nodes_of_partitions``).
    """
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def one_partition_per_call(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give every call of a reused activation module its own source partition, in place.

    The x86 quantizer groups nodes by the module they came from; a block that calls one ``nn.ReLU``
    three times becomes one partition with three outputs, which it refuses ("Input partition has more
    than one output node"). Each call is its own activation, so each gets its own name.
    """
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        if name in _STATELESS:
            node.meta["nn_module_stack"] = {**stack, key: (f"{fqn}@{node.name}", cls)}
    return graph_module


def int8_unavailable() -> str | None:
    """Why PT2E int8 cannot run here, or None."""
    try:
        _pt2e()
    except ImportError as exc:
        return f"PT2E quantization is not importable ({exc}); pip install torchslim[inductor]"
    return None


class InductorModule(RuntimeModule):
    """A model compiled by ``torch.compile`` (inductor) from its exported program (artifact: ``model.pt2``)."""

    runtime = "inductor"

    def load_artifact(self) -> None:
        program = torch.export.load(io.BytesIO(self.files["model.pt2"]))
        module = program.module()
        # freezing folds the weights into the kernels (and int8 weights into oneDNN's packed form)
        # (as a config patch around each call: torch.compile's options do not reach the freezing pass)
        self.__dict__["_compiled"] = torch.compile(module, dynamic=False)

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        compiled = self.__dict__["_compiled"]
        fixed = self.spec.get("batch")
        settings = {"freezing": True, "max_autotune": self.spec.get("mode") == "max-autotune-no-cudagraphs"}
        from torch._inductor import config  # imported on use: it is heavy, and discovery loads this module

        with torch.no_grad(), config.patch(settings):
            if fixed is None:
                return list(tensors_in(compiled(*inputs)))
            return in_chunks(compiled, inputs, fixed)


def in_chunks(call: Any, inputs: list[torch.Tensor] | tuple[torch.Tensor, ...], fixed: int) -> list[torch.Tensor]:
    """``call``'s flat outputs on ``inputs``, run in batches of exactly ``fixed`` (the last zero-padded)."""
    total = inputs[0].shape[0]
    if total == fixed:
        return list(tensors_in(call(*inputs)))
    parts = []
    for start in range(0, total, fixed):
        chunk = [t[start:start + fixed] for t in inputs]
        size = chunk[0].shape[0]
        if size < fixed:
            chunk = [torch.cat([t, t.new_zeros((fixed - size, *t.shape[1:]))]) for t in chunk]
        parts.append([t[:size] for t in tensors_in(call(*chunk))])
    return [torch.cat(outputs) for outputs in zip(*parts)]


def exported(model: nn.Module, inputs: tuple[torch.Tensor, ...], options: InductorOptions, context: Any,
             where: str) -> bytes:
    """The (for int8: PT2E-quantized) exported program of ``model``, as ``torch.export.save`` bytes."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in inputs)
    with torch.no_grad():
        if options.precision == "fp32":
            program = torch.export.export(model, inputs, dynamic_shapes=shapes)
        else:
            program = torch.export.export(model, inputs)
            prepare_pt2e, convert_pt2e, quantizer_cls, config = _pt2e()
            quantizer = quantizer_cls().set_global(config())
            observed = prepare_pt2e(one_partition_per_call(without_dead_code(program.module())), quantizer)
            for batch_inputs in calibration_inputs(context, options.calibration_batches, where):
                in_chunks(observed, batch_inputs, int(inputs[0].shape[0]))
            quantized = convert_pt2e(observed)
            # the converted program bakes the example batch into its weight prepacking: no dynamic batch
            program = torch.export.export(quantized, inputs)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class Inductor:
    """Deploy with ``torch.compile`` (inductor): ``- deploy: {method: inductor, precision: int8}``."""

    Options = InductorOptions

    @staticmethod
    def available() -> str | None:
        if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
            return "no C++ compiler found (inductor compiles C++ kernels): install g++ (apt-get install g++)"
        return None

    @torchslim.hookimpl
    def deploy(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        options: InductorOptions = step.options
        where = f"deploy/{step.method}"
        for reason in (self.available(), int8_unavailable() if options.precision == "int8" else None):
            if reason is not None:
                raise torchslim.PluginError(f"{where}: {reason}")
        inputs = positional(context.example_inputs, where)
        source = prepared(model)
        try:
            data = exported(source, inputs, options, context, where)
        except torchslim.TorchslimError:
            raise
        except Exception as exc:
            raise torchslim.StepError(f"{where}: torch.export failed for {type(model).__name__}: "
                                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from exc
        spec = spec_for(source, inputs, precision=options.precision, mode=options.mode,
                        batch=int(inputs[0].shape[0]) if options.precision == "int8" else None)
        artifact = InductorModule(spec, {"model.pt2": data})
        return checked_result(artifact, source, inputs, options, step.method)

    @torchslim.hookimpl
    def register_module_kinds(self, register: Any) -> None:
        register(InductorModule)
