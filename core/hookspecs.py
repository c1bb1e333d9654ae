"""The torchslim plugin contract: every hook a plugin may implement.

This module is the public API of the project. Each hook's docstring says what it receives, what it
returns, when it is called and how results are combined; ``docs/hooks.md`` is generated from it and a
test fails when a hook lacks a documented section or a test.

A *method* is a plugin object registered under its method name (the entry-point name in group
``torchslim``). The stage hook it implements (``compress``, ``accelerate`` or ``finetune``) is its
stage, and its ``Options`` attribute is a pydantic model of its settings. The engine calls only the
named method's implementation, so a method never has to check "is this step mine?". An *evaluator* is a
plugin implementing ``evaluate``, registered under the metric family it computes (``accuracy``,
``macs``, ...). Wrapper implementations (``@hookimpl(wrapper=True)``) run around every plugin's call of
a hook and are how cross-cutting concerns (timing, memory) are added.

Minimal method plugin::

    import torchslim
    from pydantic import BaseModel

    class HalveWeights:
        class Options(BaseModel):
            factor: float = 0.5

        @torchslim.hookimpl
        def compress(self, model, step, context):
            for p in model.parameters():
                p.data.mul_(step.options.factor)
            return torchslim.StepResult(model=model)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .context import RunContext
    from .recipe import Step
    from .results import StepResult

PROJECT = "torchslim"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The hooks that run a recipe step; a method plugin implements exactly one of them.
STAGES = ("compress", "accelerate", "finetune")


@hookspec(firstresult=True)
def compress(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Make ``model`` smaller (pruning, quantization, ...) as a recipe step of stage ``compress`` asks.

    :param model: the working copy of the user's model, after every earlier step. The plugin may
        change it in place or build a new module; either way it returns the model to continue with.
    :param step: the validated recipe step; ``step.options`` is an instance of the plugin's
        ``Options`` model, ``step.targets`` the module selection (see :func:`torchslim.select_modules`).
    :param context: the :class:`~torchslim.RunContext` (data, example inputs, original model, seed, log).
    :returns: a :class:`~torchslim.StepResult` holding the model and optional per-layer report rows.

    Called once per ``compress`` step, on the plugin registered under ``step.method`` only
    (first result wins, and there is exactly one implementation asked). Added in 0.1.
    """


@hookspec(firstresult=True)
def accelerate(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Make ``model`` faster (low-rank factors, channel removal, ...) for a step of stage ``accelerate``.

    Arguments and return value as for :func:`compress`. Plugins that replace modules should use the
    factor modules of :mod:`torchslim.lowrank` (or register their own module kinds with
    :func:`register_module_kinds`) so :func:`torchslim.load` can rebuild the model.

    Called once per ``accelerate`` step, on the plugin named by ``step.method`` only. Added in 0.1.
    """


@hookspec(firstresult=True)
def finetune(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Train ``model`` on ``context.train_data`` to recover accuracy, for a step of stage ``finetune``.

    The plugin must keep pruning masks (``torch.nn.utils.parametrize`` parametrizations) and factor
    modules intact; training through the parametrized attributes does so automatically. Use
    ``context.loss_fn`` and ``context.seed``. Arguments and return value as for :func:`compress`.

    Called once per ``finetune`` step, on the plugin named by ``step.method`` only. Added in 0.1.
    """


@hookspec
def evaluate(model: "nn.Module", context: "RunContext") -> dict[str, float]:
    """Measure ``model`` and return metrics as ``{name: value}``.

    An evaluator plugin is registered under the metric family it computes (``accuracy``, ``macs``,
    ...) and declares each metric's direction in a ``metrics`` attribute, e.g.
    ``metrics = {"accuracy": "higher"}`` (``"higher"`` or ``"lower"`` is better); constraints and
    the search read it. Return ``{}`` when the metric cannot be computed (say, no eval data).

    Called on the baseline and after every step, for the evaluators the recipe's ``evaluate`` list
    names only; the engine merges the dictionaries of all called evaluators. Added in 0.1.
    """


@hookspec
def register_strategies(register: Callable[..., None]) -> None:
    """Register named recipes ("strategies") that users can run by name.

    Call ``register(name, recipe, description="")`` once per strategy, where ``recipe`` is a recipe
    dictionary (as in YAML) or a :class:`~torchslim.Recipe`. ``Engine.run(model, "name", ...)`` and
    ``torchslim run --strategy name`` then use it; ``torchslim strategies`` lists it with the
    distribution that registered it. Names must be unique across plugins.

    Called once for every loaded plugin when the plugin manager is built; results are ignored.
    Added in 0.1.
    """


@hookspec
def register_module_kinds(register: Callable[..., None]) -> None:
    """Register module classes that :func:`torchslim.load` may rebuild from a manifest.

    Call ``register(cls)`` for each ``nn.Module`` subclass the plugin puts into models. The class
    must provide ``torchslim_spec(self) -> dict`` (JSON-serialisable constructor arguments) and a
    classmethod ``from_torchslim_spec(spec) -> cls``; its weights are then restored from the state
    dict. Only registered kinds are ever constructed on load, so a manifest cannot run arbitrary code.

    Called once for every loaded plugin when the plugin manager is built. Added in 0.1.
    """
