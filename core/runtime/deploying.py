"""Deploying without a recipe: build a runtime artifact through the installed runtime plugins.

The search and svd's latency gate time candidates where the model will run; they reach a runtime
the way a recipe step does, through the plugin registry, so a third party's runtime works as well.

>>> fast = torchslim.runtime.deploy(model, (x,), "onnxruntime")      # doctest: +SKIP
>>> fast(x)                                                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel, ValidationError
from torch import nn

from ..context import RunContext
from ..errors import PluginError, RecipeError, TorchslimError
from ..recipe import Step, format_validation_error
from ..results import StepResult


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from ..io import default_registry  # discovered once, shared with load()

    return default_registry()


def unavailable(method: str, registry: Any = None) -> str | None:
    """Why runtime ``method`` cannot run here (not installed, a missing package, ...), or None when it can."""
    registry = _registry(registry)
    try:
        plugin = registry.get("deploy", method)
    except PluginError as exc:
        return str(exc)
    check = getattr(plugin, "available", None)
    return check() if callable(check) else None


def runtime_step(method: str, options: dict[str, Any] | BaseModel | None, registry: Any = None,
                 where: str = "runtime") -> Step:
    """A validated ``deploy`` step for ``method`` with ``options`` (errors name ``where``)."""
    registry = _registry(registry)
    try:
        options_model = registry.options_model("deploy", method)
    except PluginError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    raw = options or {}
    if options_model is not None and not isinstance(raw, options_model):
        raw = raw.model_dump(exclude_unset=True) if isinstance(raw, BaseModel) else dict(raw)
        try:
            raw = options_model.model_validate(raw)
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, raw, prefix=where)) from None
    return Step(stage="deploy", method=method, options=raw)


def deploy(model: nn.Module, example_inputs: Any, method: str = "onnxruntime", *, registry: Any = None,
           train_data: Iterable | None = None, seed: int = 0, **options: Any) -> nn.Module:
    """``model`` (not changed) deployed in runtime ``method`` with ``options``; returns the callable artifact.

    ``train_data`` calibrates int8 runtimes (the example inputs do when it is None). Raises
    :class:`~torchslim.TorchslimError` when the runtime is not available here, naming why.
    """
    registry = _registry(registry)
    step = runtime_step(method, options, registry, where=f"deploy/{method}")
    reason = unavailable(method, registry)
    if reason is not None:
        raise TorchslimError(f"runtime {method!r} cannot run here: {reason}")
    context = RunContext(train_data=train_data, example_inputs=example_inputs, seed=seed)
    result = registry.caller("deploy", method)(model=model, step=step, context=context)
    if not isinstance(result, StepResult) or not isinstance(result.model, nn.Module):
        raise TorchslimError(f"runtime {method!r} returned {type(result).__name__}, not a StepResult with a model")
    return result.model
