"""torchslim: make trained PyTorch models smaller and faster, fine-tune them back, and prove it.

Quick start::

    import torchslim
    engine = torchslim.Engine()
    result = engine.run(model, "recipe.yaml", train_data=train, eval_data=test)
    print(result.table())

The layers (see docs/architecture.md): the contract (:mod:`.hookspecs`), the plugin registry
(:mod:`.registry`), the engine (:mod:`.engine`), and the shared machinery every plugin may use
(recipes, context, results, masks, module surgery, measurement, save/load in :mod:`.io`). Built-in
methods live in ``torchslim.plugins`` and reach the engine only through the registry.
"""

from __future__ import annotations

from . import _aliases, hf, masks, runtime
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
from .recipe import Constraints, Evaluation, Recipe, Step, Targets
from .registry import PluginRegistry
from .results import RunResult, StepRecord, StepResult
from .targets import select_modules
from .version import __version__

_aliases.install()

__all__ = [
    "Constraints", "DataError", "ExportError", "Engine", "Evaluation", "ModelError", "PluginError", "PluginRegistry",
    "Recipe", "RecipeError", "RunContext", "RunResult", "SaveLoadError", "Step", "StepError",
    "StepRecord", "StepResult", "Targets", "TorchslimError", "hookimpl", "hookspec", "load", "save",
    "hf", "masks", "runtime", "select_modules", "__version__",
]
