"""A minimal third-party package: a compress method (scale weights) and a cost evaluator."""

import torch
from pydantic import BaseModel, ConfigDict, Field

import torchslim


class HalveWeights:
    """Compress method ``halve``: scale weights of targeted layers by ``factor``."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(0.5, gt=0, le=1, description="multiplier applied to each weight")

    @torchslim.hookimpl
    def compress(self, model, step, context):
        rows = []
        with torch.no_grad():
            for name, module in torchslim.select_modules(model, step.targets):
                torchslim.masks.write_weight(module, "weight", module.weight * step.options.factor)
                rows.append({"layer": name, "factor": step.options.factor})
        return torchslim.StepResult(model=model, report=rows)

    @torchslim.hookimpl
    def register_strategies(self, register):
        register("halve-all", {"steps": [{"compress": {"method": "halve"}}], "evaluate": []},
                 description="halve every weight (test strategy)")


class NonzeroKib:  # a third party's cost metric the search can target
    """Evaluator ``nonzero_kib``: kibibytes the non-zero weights would take as float32 (a cost to cut)."""

    metrics = {"nonzero_kib": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model, context):
        from torchslim.measure import count_nonzeros

        return {"nonzero_kib": count_nonzeros(model) * 4 / 1024}
