"""A minimal compress method: multiply every targeted layer's weight by a factor."""

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
                module.weight.mul_(step.options.factor)
                rows.append({"layer": name, "factor": step.options.factor})
        return torchslim.StepResult(model=model, report=rows)

    @torchslim.hookimpl
    def register_strategies(self, register):
        register("halve-all", {"steps": [{"compress": {"method": "halve"}}], "evaluate": []},
                 description="halve every weight (test strategy)")
