"""torchslim: make trained PyTorch models smaller and faster, fine-tune them back, and prove it.

Quick start::

    import torchslim
    engine = torchslim.Engine()
    result = engine.run(model, "recipe.yaml", train_data=train, eval_data=test)
    print(result.table())
"""

from __future__ import annotations

from .context import RunContext
from .engine import Engine
from .errors import (
    DataError,
    ExportError,
    ModelError,
    PluginError,
    RecipeError,
    SaveLoadError,
    StepError,
    TorchslimError,
)
from .hookspecs import hookimpl, hookspec
from .io import load, save
from .registry import PluginRegistry
from .recipe import Constraints, Evaluation, Recipe, Step, Targets
from .results import RunResult, StepRecord, StepResult
from .targets import select_modules

__version__ = "0.1.0"

__all__ = [
    "Constraints", "DataError", "ExportError", "Engine", "Evaluation", "ModelError", "PluginError", "PluginRegistry",
    "Recipe", "RecipeError", "RunContext", "RunResult", "SaveLoadError", "Step", "StepError",
    "StepRecord", "StepResult", "Targets", "TorchslimError", "hookimpl", "hookspec", "load", "save",
    "select_modules", "__version__",
]
