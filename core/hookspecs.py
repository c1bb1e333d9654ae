"""The torchslim plugin contract: every hook a plugin may implement, and what a plugin declares.

This module is the public API of the project. Each hook's docstring says what it receives, what it
returns, when it is called and how results are combined; the protocols at the end say which
attributes a method, a trainer, an evaluator or a runtime provides. ``docs/hooks.md`` is generated
from this module, the plugin registry checks every plugin against it when the plugin loads, and a
test fails when a hook lacks a documented section or a test.

A *method* is a plugin object registered under its method name (the entry-point name in group
``torchslim``). The stage hook it implements (``compress``, ``accelerate``, ``finetune`` or
``deploy``) is its stage, and its ``Options`` attribute is a pydantic model of its settings. The
engine calls only the named method's implementation, so a method never has to check "is this step
mine?". An *evaluator* is a plugin implementing ``evaluate``, registered under the metric family it
computes (``accuracy``, ``macs``, ...). Wrapper implementations (``@hookimpl(wrapper=True)``) run
around every plugin's call of a hook and are how cross-cutting concerns (timing, memory) are added;
the built-in ``timing`` plugin is one.

Minimal method plugin::

    import torchslim
    from pydantic import BaseModel, ConfigDict, Field

    class HalveWeights:
        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            factor: float = Field(0.5, gt=0, le=1, description="multiplier of every targeted weight")

        @torchslim.hookimpl
        def compress(self, model, step, context):
            rows = []
            for name, module in torchslim.select_modules(model, step.targets):
                torchslim.masks.write_weight(module, "weight", module.weight * step.options.factor)
                rows.append({"layer": name, "factor": step.options.factor})
            return torchslim.StepResult(model=model, report=rows)
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Protocol

import pluggy

PROJECT = "torchslim"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The hooks that run a recipe step; a method plugin implements exactly one of them. ``deploy`` steps
#: come last in a recipe.
STAGES = ("compress", "accelerate", "finetune", "deploy")

#: Whether a larger (``"higher"``) or smaller (``"lower"``) value is better (metrics) or stronger (knobs).
Direction = Literal["higher", "lower"]


@hookspec(firstresult=True)
def compress(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Make ``model`` smaller (pruning, quantization, ...) as a recipe step of stage ``compress`` asks.

    :param model: the working copy of the user's model, after every earlier step. The plugin may
        change it in place or build a new module; either way it returns the model to continue with.
    :param step: the validated recipe step; ``step.options`` is an instance of the plugin's
        ``Options`` model, ``step.targets`` the module selection (see :func:`torchslim.select_modules`).
    :param context: the :class:`~torchslim.RunContext` (data, example inputs, original model, seed, log).
    :returns: a :class:`~torchslim.StepResult` holding the model and optional per-layer report rows.
        Returning anything else (a bare ``nn.Module``, ``None``, ``StepResult(model=None)``) fails
        the step with a :class:`~torchslim.StepError` naming the plugin.

    Called once per ``compress`` step, on the plugin registered under ``step.method`` only
    (first result wins, and there is exactly one implementation asked). After the call the engine
    runs the model on the example inputs and fails the step when its outputs changed structure,
    shape or dtype, unless the method declares ``changes_outputs = True``. Added in 0.1.
    """


@hookspec(firstresult=True)
def accelerate(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Make ``model`` faster (low-rank factors, channel removal, ...) for a step of stage ``accelerate``.

    Arguments, return value and checks as for :func:`compress`. Plugins that put new module classes
    into the model register them with :func:`register_module_kinds` so :func:`torchslim.load` can
    rebuild the model (the built-in ``svd`` method does so for its factor modules).

    Called once per ``accelerate`` step, on the plugin named by ``step.method`` only. Added in 0.1.
    """


@hookspec(firstresult=True)
def finetune(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Train ``model`` on ``context.train_data`` to recover accuracy, for a step of stage ``finetune``.

    The plugin must keep pruning masks (``torch.nn.utils.parametrize`` parametrizations) and factor
    modules intact; training through the parametrized attributes does so automatically, and
    :func:`torchslim.training.fit` is a ready loop. Use ``context.loss_fn`` and ``context.seed``.
    Arguments, return value and checks as for :func:`compress`. A trainer that can train longer
    (``train_longer``, see :class:`Trainer`) lets the search back off by fine-tuning more.

    Called once per ``finetune`` step, on the plugin named by ``step.method`` only. Added in 0.1.
    """


@hookspec(firstresult=True)
def deploy(model: "nn.Module", step: "Step", context: "RunContext") -> "StepResult":
    """Turn ``model`` into a runtime artifact (ONNX Runtime, inductor, TorchScript, ...), as the last step.

    :returns: a :class:`~torchslim.StepResult` whose ``model`` is a callable ``nn.Module`` backed by the
        runtime (its ``forward`` takes the model's inputs and returns outputs of the same structure),
        so every evaluator measures exactly what ships. The module must be of a registered kind
        (:func:`register_module_kinds`) that writes its artifact files beside the manifest, so
        :func:`torchslim.save` and :func:`torchslim.load` carry it.

    A recipe may hold one ``deploy`` step, and only as its last step. Called once, on the plugin
    named by ``step.method`` only. Added in 0.2.
    """


@hookspec
def evaluate(model: "nn.Module", context: "RunContext") -> "dict[str, float]":
    """Measure ``model`` and return metrics as ``{name: value}``.

    An evaluator plugin is registered under the metric family it computes (``accuracy``, ``macs``,
    ...) and declares each metric's direction in a ``metrics`` attribute, e.g.
    ``metrics = {"accuracy": "higher"}`` (see :class:`Evaluator`); constraints and the search read
    it, and any lower-is-better metric can be the search's target. Return ``{}`` when the metric
    cannot be computed (say, no eval data).

    Called on the baseline and after every step, for the evaluators the recipe's ``evaluate`` list
    names only (without a list: every installed evaluator that is ``by_default``); the engine merges
    the dictionaries of all called evaluators. Added in 0.1.
    """


@hookspec
def register_strategies(register: "Callable[..., None]") -> None:
    """Register named recipes ("strategies") that users can run by name.

    Call ``register(name, recipe, description="")`` once per strategy, where ``recipe`` is a recipe
    dictionary (as in YAML) or a :class:`~torchslim.Recipe`. ``Engine.run(model, "name", ...)`` and
    ``torchslim run --strategy name`` then use it; ``torchslim strategies`` lists it with the
    distribution that registered it. Names must be unique across plugins.

    Called once for every loaded plugin when it is registered; results are ignored. Added in 0.1.
    """


@hookspec
def register_module_kinds(register: "Callable[..., None]") -> None:
    """Register module classes that :func:`torchslim.load` may rebuild from a manifest.

    Call ``register(cls, aliases=())`` for each ``nn.Module`` subclass the plugin puts into models.
    The class must provide ``torchslim_spec(self) -> dict`` (JSON-serialisable constructor arguments)
    and a classmethod ``from_torchslim_spec(spec) -> cls``; its weights are then restored from the
    state dict. ``aliases`` are older qualified names of the class that manifests written by earlier
    releases may hold. Only registered kinds are ever constructed on load, so a manifest cannot run
    arbitrary code. Built-in kinds travel the same way.

    Called once for every loaded plugin when it is registered. Added in 0.1 (``aliases`` in 0.2).
    """


# --------------------------------------------------------------------------------------- declarations
class Method(Protocol):
    """What a method plugin declares besides its stage hook. Every attribute is optional.

    The registry checks each one when the plugin loads and refuses a plugin that gets one wrong,
    naming the attribute and the fix.
    """

    name: Annotated[str, "the method name; the entry-point name (or engine.register's name) wins"]
    Options: Annotated[type, "a pydantic BaseModel of the method's settings; recipe keys are validated "
                             "against it (unknown keys are named). Without it the method takes no options"]
    default_types: Annotated[tuple, "nn.Module classes the method targets when a step names no types"]
    strength: Annotated[tuple, "(option, direction): the Options field the search varies and whether a "
                               "'higher' or 'lower' value compresses more; also declarable on the field "
                               "as json_schema_extra={'strength': 'higher' | 'lower'}"]
    changes_outputs: Annotated[bool, "True when the method changes the model's output structure, shapes or "
                                     "dtypes on purpose (the engine's interface check then skips it)"]
    needs: Annotated[tuple, "what a run must be given for the method: any of 'train_data', 'eval_data', "
                            "'example_inputs'; the engine checks before the first step (a finetune method "
                            "needs train_data without saying so)"]


class Trainer(Method, Protocol):
    """A ``finetune`` method that can train longer: the search's back-off calls it."""

    train_longer: Annotated[Callable[[Any, float], Any],
                            "train_longer(options, factor) -> options of the same type that train "
                            "about factor times longer (more epochs or steps)"]


class Evaluator(Protocol):
    """What an evaluator plugin (one implementing ``evaluate``) declares."""

    metrics: Annotated[dict, "{metric: 'higher' | 'lower'}: every metric it returns and which way is better; "
                             "required"]
    by_default: Annotated[bool, "run when a recipe has no evaluate list (default True); False for costly "
                                "or task-specific evaluators"]


class Runtime(Method, Protocol):
    """A ``deploy`` method: turns the model into an artifact of one runtime."""

    available: Annotated[Callable[[], str | None],
                         "available() -> None when the runtime can run here, else the reason (e.g. "
                         "'pip install onnxruntime'); torchslim deploy skips unavailable runtimes"]


#: The declarations above, by the kind of plugin that makes them (what docs/hooks.md lists).
DECLARATIONS: dict[str, type] = {"Method": Method, "Trainer": Trainer, "Evaluator": Evaluator, "Runtime": Runtime}
