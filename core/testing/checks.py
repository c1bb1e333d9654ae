"""The contract checks: a method, an evaluator and a strategy each honour what the engine relies on."""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Mapping

import torch
from pydantic import BaseModel
from torch import nn

from ..batches import as_inputs, call_model, tensors_in
from ..engine import Engine
from ..engine.interface import first_difference, signature
from ..errors import RecipeError, StepError, TorchslimError
from ..hookspecs import STAGES
from ..masks import apply_mask
from ..preflight import changed_layers
from ..recipe import Targets
from ..registry import PluginRegistry
from ..results import StepResult
from ..surgery import private_copy
from ..targets import WEIGHT_LAYERS, select_modules
from .engines import engine_of
from .probe import _probing
from .snapshots import assert_untouched, differences, model_snapshot

UNTOUCHED = "leave the user's model alone; the engine hands the plugin a copy"
TEACHER = ("it is the caller's model, lent read-only as the teacher of later steps: read it, never train or "
           "edit it (copy.deepcopy it if you must)")
#: Option key no method accepts; used to check that unknown options are rejected by name.
UNKNOWN_OPTION = "torchslim_testing_unknown_option"
_DIRECTIONS = ("higher", "lower")


def _check_options_model(plugin: Any, name: str) -> type | None:

    options = getattr(plugin, "Options", None)
    if options is None:  # a method without options: the engine refuses any option given to it
        return None
    assert isinstance(options, type) and issubclass(options, BaseModel), (
        f"method {name!r}: Options must be a pydantic BaseModel subclass, got {options!r}")
    assert options.model_config.get("extra") == "forbid", (
        f"method {name!r}: Options must set model_config = ConfigDict(extra='forbid') so misspelt "
        f"options are rejected instead of ignored")
    undocumented = [f for f, info in options.model_fields.items() if not info.description]
    assert not undocumented, (
        f"method {name!r}: Options fields {undocumented} lack description=...; the docs are generated from them")
    strength = [f for f, info in options.model_fields.items()
                if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("strength")]
    assert len(strength) <= 1, f"method {name!r}: only one Options field may be the strength knob, got {strength}"
    return options


def _one_step(stage: str, name: str, options: Mapping[str, Any], targets: Mapping[str, Any] | None) -> dict:
    body: dict[str, Any] = {"method": name, **options}
    if targets:
        body["targets"] = dict(targets)
    return {"steps": [{stage: body}], "evaluate": []}


def _check_rejects(engine: "Engine", stage: str, name: str, options: dict, field: str,
                   targets: Mapping[str, Any] | None) -> None:

    try:
        engine.recipe(_one_step(stage, name, options, targets))
    except RecipeError as exc:
        assert field in str(exc), f"method {name!r}: the error for bad option {field!r} does not name it:\n{exc}"
        return
    raise AssertionError(f"method {name!r} accepted bad option {field}={options[field]!r}; "
                         f"constrain the field in Options (Field(ge=..., le=...), Literal[...])")


def check_method_plugin(
    engine_or_registry: "Engine | PluginRegistry",
    name: str,
    model: "nn.Module | None" = None,
    example_inputs: Any = None,
    good_options: Mapping[str, Any] | None = None,
    bad_options: Mapping[str, Any] | None = None,
    *,
    task: Any = None,
    stage: str | None = None,
    targets: Mapping[str, Any] | None = None,
    failing: Mapping[str, Any] | None = None,
    check_determinism: bool = True,
    after_pruning: bool = True,
    **run_kwargs: Any,
) -> "StepResult":
    """Assert that method plugin ``name`` honours the contract; return its :class:`~torchslim.StepResult`.

    Give the model and data as ``model, example_inputs`` plus :meth:`Engine.run` keywords, or as a
    :class:`~torchslim.testing.TinyTask` (``task=task``, or ``model=task.model, **task.run_kwargs()``).
    Checks, in order:

    1. it is registered under ``name`` with exactly one stage (``stage``, when given);
    2. its ``Options`` is a pydantic model with ``extra="forbid"``, a description on every field and
       at most one strength field;
    3. ``good_options`` validate; every ``bad_options`` item ``{field: value}`` (merged into the good
       options) and an unknown option are rejected with a :class:`~torchslim.RecipeError` naming the field;
    4. a one-step recipe runs through :meth:`Engine.run`, the hook returns a ``StepResult`` whose
       ``report`` rows are dicts with the same keys, ``skipped`` holds ``(layer, reason)`` pairs and
       ``info`` is JSON; the returned model still runs on ``example_inputs`` with outputs of the
       original structure and shapes;
    5. neither the input ``model`` nor ``context.original_model`` (the teacher) changes; also not when
       the run fails after the plugin's hook returned, nor in the ``failing`` run;
    6. with ``after_pruning`` (compress and accelerate methods), run after a ``magnitude`` step it still
       changes every layer it changes alone, lists it in ``skipped``, or fails with a clear error: a
       method must not silently skip masked layers (write them with :func:`torchslim.masks.write_weight`);
    7. with ``check_determinism``, a second run with the same seed gives the same weights.

    ``failing`` describes a run that must fail with a :class:`~torchslim.TorchslimError`: its
    ``"options"`` replace the good options, ``"model"`` the model, other keys override ``run_kwargs``
    (e.g. ``{"train_data": None}`` for a fine-tuning method).
    """
    engine = engine_of(engine_or_registry)
    model, inputs, run_kwargs = _task_arguments(model, example_inputs, task, run_kwargs)
    good = dict(good_options or {})
    stage = _check_registration(engine, name, stage)
    recipe = engine.recipe(_one_step(stage, name, good, targets))
    for field, value in (bad_options or {}).items():
        _check_rejects(engine, stage, name, {**good, field: value}, field, targets)
    _check_rejects(engine, stage, name, {**good, UNKNOWN_OPTION: 1}, UNKNOWN_OPTION, targets)

    before = model_snapshot(model)
    returned, result = _check_one_run(engine, name, stage, model, recipe, inputs, run_kwargs, before)
    _check_failure_after_hook(engine, name, stage, model, recipe, inputs, run_kwargs, before)
    if failing is not None:
        _check_failing_run(engine, name, stage, model, good, targets, inputs, run_kwargs, dict(failing))
    if after_pruning and stage in ("compress", "accelerate"):
        _check_after_pruning(engine, name, stage, model, good, targets, inputs, run_kwargs, returned)
    if check_determinism:
        again = engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
        problems = differences(model_snapshot(result.model), model_snapshot(again.model), modes=False)
        assert not problems, (f"{name!r} is not deterministic for a fixed seed ({'; '.join(problems)}); "
                              f"seed randomness from context.seed / context.generator()")
    return returned


def _task_arguments(model: Any, example_inputs: Any, task: Any, run_kwargs: dict) -> tuple[Any, tuple, dict]:
    """``(model, inputs, run_kwargs)`` from explicit arguments, a task, or ``**task.run_kwargs()``."""
    run_kwargs = dict(run_kwargs)
    if task is not None:
        model = task.model if model is None else model
        run_kwargs = {**task.run_kwargs(), **run_kwargs}
    if example_inputs is None:
        example_inputs = run_kwargs.pop("example_inputs", None)
    else:
        run_kwargs.pop("example_inputs", None)
    assert model is not None, "give the model to check: model=..., or task=tiny_task()"
    assert example_inputs is not None, "give example_inputs=... (or task=...): the checks run the model on them"
    inputs = as_inputs(example_inputs)
    return model, inputs, run_kwargs


def _check_registration(engine: "Engine", name: str, stage: str | None) -> str:

    registry = engine.registry
    assert name in registry.infos, (
        f"no plugin is registered under {name!r}; installed: {sorted(registry.infos)}. Check the entry "
        f"point name in group 'torchslim' (pip install your package) or register it at runtime")
    info = registry.infos[name]
    stages = [s for s in info.stages if s in STAGES]
    assert len(stages) == 1, f"plugin {name!r} must implement exactly one of {STAGES}, implements {info.stages}"
    if stage is not None:
        assert stages[0] == stage, f"plugin {name!r} implements {stages[0]!r}, expected {stage!r}"
    _check_options_model(info.obj, name)
    return stages[0]


def _check_one_run(engine: "Engine", name: str, stage: str, model: Any, recipe: Any, inputs: tuple,
                   run_kwargs: dict, before: Any) -> tuple[Any, Any]:


    with torch.no_grad():  # on a copy: even switching the user's model to eval mode is a change
        reference = call_model(copy.deepcopy(model).eval(), inputs)
    with _probing(engine) as probe:
        try:
            result = engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
        except TorchslimError as exc:
            raise AssertionError(f"plugin {name!r}: a run with good_options failed: {exc}") from exc
    assert_untouched(before, model, f"running {name!r} changed the input model", UNTOUCHED)
    assert not probe.teacher_problems, (
        f"{name!r} changed context.original_model ({'; '.join(probe.teacher_problems)}); {TEACHER}")
    assert len(probe.results) == 1, f"{name!r}: expected one {stage} call, saw {len(probe.results)}"
    returned = probe.results[0]
    if not isinstance(returned, StepResult):
        raise AssertionError(f"plugin {name!r}: its {stage} hook returned {type(returned).__name__}; return "
                             f"torchslim.StepResult(model=...)")
    _check_step_result(returned, name)
    _check_outputs(result.model, inputs, reference, name)
    json.loads(result.to_json())  # the run report of this step serialises
    return returned, result


def _check_failure_after_hook(engine: "Engine", name: str, stage: str, model: Any, recipe: Any, inputs: tuple,
                              run_kwargs: dict, before: Any) -> None:

    with _probing(engine, fail_after=True):
        try:
            engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
        except StepError:
            pass
        else:
            raise AssertionError(f"{name!r}: a failure injected after the {stage} hook did not stop the run")
    assert_untouched(before, model, f"a failed run of {name!r} changed the input model", UNTOUCHED)


def _check_failing_run(engine: "Engine", name: str, stage: str, model: Any, good: dict, targets: Any,
                       inputs: tuple, run_kwargs: dict, failing: dict) -> None:

    fail_model = failing.pop("model", model)
    fail_before = model_snapshot(fail_model)
    fail_options = failing.pop("options", good)
    kwargs = {**run_kwargs, **failing}
    kwargs.setdefault("example_inputs", inputs)
    try:
        engine.run(fail_model, _one_step(stage, name, fail_options, targets), **kwargs)
    except TorchslimError:
        pass
    except Exception as exc:  # noqa: BLE001 - the assertion names what was raised instead
        raise AssertionError(f"{name!r}: the failing run raised {type(exc).__name__}: {exc}; "
                             f"raise a torchslim error (RecipeError, DataError, ModelError) instead") from exc
    else:
        raise AssertionError(f"{name!r}: the failing run {failing or fail_options} did not fail")
    assert_untouched(fail_before, fail_model, f"a failing run of {name!r} changed its input model", UNTOUCHED)


def _check_after_pruning(engine: "Engine", name: str, stage: str, model: Any, good: dict, targets: Any,
                         inputs: tuple, run_kwargs: dict, alone: Any) -> None:
    """On a model whose layers carry pruning masks, the method must change what it changes alone,
    list it in ``skipped``, or refuse with a clear error; silently leaving masked layers is a bug."""

    pruned = _masked_copy(model, engine.registry.infos[name].obj, targets)
    if pruned is None:
        return
    try:
        both = engine.run(pruned, _one_step(stage, name, good, targets), example_inputs=inputs, **run_kwargs)
    except TorchslimError:
        return  # refusing masked layers with a clear error is allowed
    changed_alone = set(changed_layers(model, alone.model))
    changed_after = set(changed_layers(pruned, both.model))
    skipped = {layer for layer, _ in both.steps[-1].skipped}
    silent = sorted(layer for layer in changed_alone - changed_after - skipped
                    if not any(layer.startswith(s + ".") or s.startswith(layer + ".") for s in skipped))
    assert not silent, (
        f"{name!r} changes {silent[:5]} on its own but, after an earlier step masked them, leaves them as they "
        f"were without listing them in skipped. Write masked weights with torchslim.masks.write_weight(module, "
        f"'weight', value) (module.weight.copy_ on a masked layer writes into a temporary), or skip the layers "
        f"with a reason, or refuse them with a clear error")


def _masked_copy(model: Any, plugin: Any, targets: Any) -> Any:
    """A copy of ``model`` whose targeted weights carry a light magnitude mask (the smallest 5 % zeroed), as a
    pruning step leaves them; light, so that a pruning method asked for more still has work to do."""


    copied = private_copy(model)
    chosen = select_modules(copied, Targets.model_validate(dict(targets or {})),
                            getattr(plugin, "default_types", WEIGHT_LAYERS))
    masked = 0
    for _, module in chosen:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.numel() > 1:
            magnitude = weight.detach().abs()
            apply_mask(module, "weight", magnitude > magnitude.flatten().kthvalue(max(1, magnitude.numel() // 20)).values)
            masked += 1
    return copied if masked else None


def check_evaluator_plugin(
    engine_or_registry: "Engine | PluginRegistry",
    name: str,
    model: "nn.Module",
    example_inputs: Any,
    *,
    expect: list[str] | None = None,
    check_without_data: bool = True,
    **run_kwargs: Any,
) -> dict[str, float]:
    """Assert that evaluator ``name`` honours the contract; return the metrics it measured.

    Checks that it is registered under ``name`` implementing ``evaluate``; its ``metrics`` attribute
    maps each metric it returns to ``"higher"`` or ``"lower"``; run by :meth:`Engine.run` on
    ``model`` (with ``run_kwargs`` such as ``eval_data``) it returns the ``expect`` keys (default: all
    declared), no undeclared key, and finite numbers; the input model is left untouched; and, with
    ``check_without_data``, a run with no data and no example inputs returns a subset of its keys
    (``{}`` is fine) instead of raising.
    """
    engine = engine_of(engine_or_registry)
    registry = engine.registry
    assert name in registry.infos, f"no plugin is registered under {name!r}; installed: {sorted(registry.infos)}"
    info = registry.infos[name]
    assert "evaluate" in info.stages, f"plugin {name!r} does not implement evaluate (it implements {info.kind})"
    declared = getattr(info.obj, "metrics", None)
    assert isinstance(declared, dict) and declared, (
        f"evaluator {name!r} must declare metrics = {{'metric': 'higher' | 'lower', ...}}")
    wrong = {k: v for k, v in declared.items() if v not in _DIRECTIONS}
    assert not wrong, f"evaluator {name!r}: directions must be 'higher' or 'lower', got {wrong}"

    inputs = as_inputs(example_inputs)
    before = model_snapshot(model)
    recipe = {"steps": [], "evaluate": [name]}
    metrics = engine.run(model, recipe, example_inputs=inputs, **run_kwargs).baseline
    assert_untouched(before, model, f"evaluator {name!r} changed the input model", "measure a model, never edit it")
    _check_metric_keys(metrics, declared, name, expect if expect is not None else list(declared))

    if check_without_data:
        try:
            bare = engine.run(model, recipe).baseline
        except Exception as exc:  # noqa: BLE001 - the assertion names the exception
            raise AssertionError(f"evaluator {name!r} raised {type(exc).__name__}: {exc} when the run has no data "
                                 f"and no example inputs; return {{}} for what it cannot measure") from exc
        _check_metric_keys(bare, declared, name, [])
    return metrics


def _check_metric_keys(metrics: dict, declared: dict, name: str, expect: list[str]) -> None:
    undeclared = sorted(set(metrics) - set(declared))
    assert not undeclared, (f"evaluator {name!r} returned metrics {undeclared} it does not declare in its "
                            f"metrics attribute {sorted(declared)}; declare each with 'higher' or 'lower'")
    missing = sorted(set(expect) - set(metrics))
    assert not missing, f"evaluator {name!r} did not return {missing} (returned {sorted(metrics)})"
    for key, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (
            f"evaluator {name!r}: metric {key}={value!r} must be a finite int or float")


def check_strategy(engine_or_registry: "Engine | PluginRegistry", name: str, *,
                   distribution: str | None = None) -> Any:
    """Assert that strategy ``name`` is registered (by ``distribution``, when given) and validates.

    Returns the validated :class:`~torchslim.Recipe`; run it with ``engine.run(model, name, ...)``.
    """
    engine = engine_of(engine_or_registry)
    strategies = engine.registry.strategies
    assert name in strategies, f"no strategy {name!r}; registered: {sorted(strategies)}"
    strategy = strategies[name]
    if distribution is not None:
        assert strategy.distribution == distribution, (
            f"strategy {name!r} comes from {strategy.distribution!r}, expected {distribution!r}")
    assert strategy.description, f"strategy {name!r} has no description; `torchslim strategies` shows it"
    return engine.recipe(name)


def _check_step_result(returned: "StepResult", name: str) -> None:

    assert isinstance(returned.model, nn.Module), f"{name!r}: StepResult.model must be an nn.Module"
    assert all(isinstance(row, dict) for row in returned.report), f"{name!r}: StepResult.report rows must be dicts"
    keys = {tuple(row) for row in returned.report}
    assert len(keys) <= 1, (f"{name!r}: StepResult.report rows must share their keys (they form one table), got "
                            f"{sorted(keys)[:3]}")
    assert all(isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, str) for x in s)
               for s in returned.skipped), f"{name!r}: StepResult.skipped must hold (layer, reason) string pairs"
    try:
        json.dumps(returned.info)
        json.dumps(returned.report)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name!r}: StepResult.info and report must be JSON-serialisable: {exc}; "
                             f"convert tensors with float()/int()/.tolist()") from None


def _check_outputs(model: "nn.Module", inputs: tuple, reference: Any, name: str) -> None:


    model.eval()
    with torch.no_grad():
        output = call_model(model, inputs)
    difference = first_difference(signature(reference), signature(output))
    assert difference is None, (f"{name!r}: the returned model's outputs differ from the input model's "
                                f"({difference}); methods must keep the model's interface")
    assert all(bool(torch.isfinite(t).all()) for t in tensors_in(output) if t.is_floating_point()), (
        f"{name!r}: the returned model outputs NaN or inf")
