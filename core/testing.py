"""The plugin author kit: helpers and pytest fixtures that check a plugin honours the torchslim contract.

Installed with torchslim and loaded by pytest automatically (entry point ``pytest11``), so a plugin
package's tests can use the fixtures without any ``conftest.py``::

    from torchslim.testing import check_method_plugin

    def test_int8_honours_the_contract(torchslim_engine, torchslim_tiny_task):
        task = torchslim_tiny_task
        check_method_plugin(torchslim_engine, "int8", task.model, task.example_inputs,
                            good_options={"conv": "weight-only"}, bad_options={"conv": "fp4"})

Fixtures: ``torchslim_engine`` (an :class:`~torchslim.Engine` that discovered every installed plugin),
``torchslim_bare_engine`` (no discovery: register only what a test names) and ``torchslim_tiny_task``
(a small CNN with a learnable synthetic 4-class task, see :func:`tiny_task`).

Helpers: :func:`register_inline_plugin`, :func:`check_method_plugin`, :func:`check_evaluator_plugin`,
:func:`check_strategy`. A failed check raises ``AssertionError`` saying which rule broke and how to fix it.

pytest imports this module in every run of every project in the environment, so it imports torch
and the engine only inside functions.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

try:  # the helpers work without pytest; only the fixtures need it
    import pytest
except ImportError:  # pragma: no cover - pytest absent
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .engine import Engine
    from .registry import PluginRegistry
    from .results import RunResult, StepResult

__all__ = [
    "TinyTask", "check_evaluator_plugin", "check_method_plugin", "check_strategy",
    "model_snapshot", "register_inline_plugin", "tiny_task",
]

#: Option key no method accepts; used to check that unknown options are rejected by name.
UNKNOWN_OPTION = "torchslim_testing_unknown_option"
_PROBE_NAME = "torchslim.testing.probe"
_DIRECTIONS = ("higher", "lower")


# ---------------------------------------------------------------------------------------- engines
def engine_of(engine_or_registry: "Engine | PluginRegistry") -> "Engine":
    """The :class:`~torchslim.Engine` to run checks with: the engine itself, or one over a registry."""
    from .engine import Engine
    from .registry import PluginRegistry

    if isinstance(engine_or_registry, Engine):
        return engine_or_registry
    if isinstance(engine_or_registry, PluginRegistry):
        if engine_or_registry.pm.get_plugin("torchslim.instrument") is not None:
            raise TypeError("this registry already belongs to an Engine; pass that Engine instead")
        return Engine(registry=engine_or_registry)
    raise TypeError(f"expected a torchslim.Engine or PluginRegistry, got {type(engine_or_registry).__name__}")


@contextlib.contextmanager
def register_inline_plugin(engine: "Engine | PluginRegistry", plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (object or class) under ``name`` for the ``with`` block, then unregister it.

    Yields the registered plugin object. Unregistration happens in ``finally``, so a failing test
    leaves the engine as it found it::

        with register_inline_plugin(engine, MyMethod, "mine"):
            engine.run(model, {"steps": [{"compress": {"method": "mine"}}]})
    """
    registry = getattr(engine, "registry", engine)
    obj = registry.register(plugin, name=name)
    registered = next(key for key, info in registry.infos.items() if info.obj is obj)
    try:
        yield obj
    finally:
        if registered in registry.infos:
            registry.unregister(registered)


# ---------------------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class _Snapshot:
    structure: tuple[tuple[str, str], ...]
    training: tuple[tuple[str, bool], ...]
    grads: tuple[tuple[str, bool], ...]
    state: dict


def model_snapshot(model: "nn.Module") -> _Snapshot:
    """A deep record of ``model`` (module tree, modes, ``requires_grad`` flags, state dict values)."""
    return _Snapshot(
        structure=tuple((n, f"{type(m).__module__}.{type(m).__qualname__}") for n, m in model.named_modules()),
        training=tuple((n, m.training) for n, m in model.named_modules()),
        grads=tuple((n, p.requires_grad) for n, p in model.named_parameters()),
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def _differences(before: _Snapshot, after: _Snapshot, modes: bool = True) -> list[str]:
    import torch

    out = []
    if before.structure != after.structure:
        changed = sorted(set(before.structure) ^ set(after.structure))[:3]
        out.append(f"module tree changed (e.g. {changed})")
    if modes and before.training != after.training:
        out.append("train/eval mode changed")
    if before.grads != after.grads:
        out.append("requires_grad flags changed")
    if before.state.keys() != after.state.keys():
        out.append(f"state dict keys changed ({sorted(set(before.state) ^ set(after.state))[:3]})")
    else:
        # equal_nan: a NaN the user had is not a change; dtype/shape changes count
        changed = [k for k, v in before.state.items()
                   if v.shape != after.state[k].shape or v.dtype != after.state[k].dtype
                   or not torch.equal(v, after.state[k])]
        if changed:
            out.append(f"values of {changed[:5]} changed")
    return out


def _assert_untouched(before: _Snapshot, model: "nn.Module", what: str, fix: str) -> None:
    problems = _differences(before, model_snapshot(model))
    assert not problems, f"{what}: {'; '.join(problems)}. {fix}"


# ---------------------------------------------------------------------------------------- the probe
class _Probe:
    """Wrapper plugin that watches one stage call: the teacher stays intact, the hook's return value."""

    def __init__(self, fail_after: bool = False) -> None:
        self.fail_after = fail_after
        self.results: list[Any] = []
        self.teacher_problems: list[str] = []

    def _around(self, model: Any, context: Any) -> Iterator[None]:
        teacher = context.original_model
        before = model_snapshot(teacher) if teacher is not None else None
        try:
            result = yield
        finally:
            if before is not None:
                self.teacher_problems += _differences(before, model_snapshot(teacher))
        self.results.append(result)
        if self.fail_after:
            # a failure after the plugin changed the working model: the user's model must not show it
            raise RuntimeError("torchslim.testing: failure injected after the plugin's hook returned")
        return result


def _probe_class() -> type:
    from .hookspecs import hookimpl

    class Probe(_Probe):
        @hookimpl(wrapper=True)
        def compress(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

        @hookimpl(wrapper=True)
        def accelerate(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

        @hookimpl(wrapper=True)
        def finetune(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

    return Probe


@contextlib.contextmanager
def _probing(engine: "Engine", fail_after: bool = False) -> Iterator[_Probe]:
    probe = _probe_class()(fail_after=fail_after)
    engine.registry.pm.register(probe, name=_PROBE_NAME)
    try:
        yield probe
    finally:
        engine.registry.pm.unregister(probe)


# ---------------------------------------------------------------------------------------- options
def _check_options_model(plugin: Any, name: str) -> type:
    from pydantic import BaseModel

    options = getattr(plugin, "Options", None)
    assert options is not None, (
        f"method {name!r} has no Options attribute; give it a pydantic model (even an empty one) so "
        f"recipes are validated before any work starts")
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
    from .errors import RecipeError

    try:
        engine.recipe(_one_step(stage, name, options, targets))
    except RecipeError as exc:
        assert field in str(exc), f"method {name!r}: the error for bad option {field!r} does not name it:\n{exc}"
        return
    raise AssertionError(f"method {name!r} accepted bad option {field}={options[field]!r}; "
                         f"constrain the field in Options (Field(ge=..., le=...), Literal[...])")


# ---------------------------------------------------------------------------------------- methods
def check_method_plugin(
    engine_or_registry: "Engine | PluginRegistry",
    name: str,
    model: "nn.Module",
    example_inputs: Any,
    good_options: Mapping[str, Any] | None = None,
    bad_options: Mapping[str, Any] | None = None,
    *,
    stage: str | None = None,
    targets: Mapping[str, Any] | None = None,
    failing: Mapping[str, Any] | None = None,
    check_determinism: bool = True,
    **run_kwargs: Any,
) -> "StepResult":
    """Assert that method plugin ``name`` honours the contract; return its :class:`~torchslim.StepResult`.

    Checks, in order:

    1. it is registered under ``name`` with exactly one stage (``stage``, when given);
    2. its ``Options`` is a pydantic model with ``extra="forbid"``, a description on every field and
       at most one strength field;
    3. ``good_options`` validate; every ``bad_options`` item ``{field: value}`` (merged into the good
       options) and an unknown option are rejected with a :class:`~torchslim.RecipeError` naming the field;
    4. a one-step recipe runs through :meth:`Engine.run`, the hook returns a ``StepResult`` whose
       ``report`` rows are dicts, ``skipped`` holds ``(layer, reason)`` pairs and ``info`` is JSON;
       the returned model still runs on ``example_inputs`` with outputs of the original shape;
    5. neither the input ``model`` nor ``context.original_model`` (the teacher) changes; also not when
       the run fails after the plugin's hook returned, nor in the ``failing`` run;
    6. with ``check_determinism``, a second run with the same seed gives the same weights.

    ``failing`` describes a run that must fail with a :class:`~torchslim.TorchslimError`: its
    ``"options"`` replace the good options, ``"model"`` the model, other keys override ``run_kwargs``
    (e.g. ``{"train_data": None}`` for a fine-tuning method). ``run_kwargs`` go to :meth:`Engine.run`
    (``train_data``, ``eval_data``, ``loss_fn``, ...).
    """
    import torch

    from .errors import StepError, TorchslimError
    from .hookspecs import STAGES
    from .results import StepResult

    engine = engine_of(engine_or_registry)
    registry = engine.registry
    good = dict(good_options or {})
    assert name in registry.infos, (
        f"no plugin is registered under {name!r}; installed: {sorted(registry.infos)}. Check the entry "
        f"point name in group 'torchslim' (pip install your package) or register it at runtime")
    info = registry.infos[name]
    stages = [s for s in info.stages if s in STAGES]
    assert len(stages) == 1, f"plugin {name!r} must implement exactly one of {STAGES}, implements {info.stages}"
    if stage is not None:
        assert stages[0] == stage, f"plugin {name!r} implements {stages[0]!r}, expected {stage!r}"
    stage = stages[0]
    _check_options_model(info.obj, name)

    recipe = engine.recipe(_one_step(stage, name, good, targets))
    for field, value in (bad_options or {}).items():
        _check_rejects(engine, stage, name, {**good, field: value}, field, targets)
    _check_rejects(engine, stage, name, {**good, UNKNOWN_OPTION: 1}, UNKNOWN_OPTION, targets)

    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    before = model_snapshot(model)
    with torch.no_grad():  # on a copy: even switching the user's model to eval mode is a change
        reference = copy.deepcopy(model).eval()(*inputs)
    untouched = "leave the user's model alone; the engine hands the plugin a copy"

    with _probing(engine) as probe:
        result = engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
    _assert_untouched(before, model, f"running {name!r} changed the input model", untouched)
    assert not probe.teacher_problems, (
        f"{name!r} changed context.original_model ({'; '.join(probe.teacher_problems)}); it is the "
        f"teacher of later steps: read it, never train or edit it (copy.deepcopy it if you must)")
    assert len(probe.results) == 1, f"{name!r}: expected one {stage} call, saw {len(probe.results)}"
    returned = probe.results[0]
    if not isinstance(returned, StepResult):
        raise AssertionError(f"plugin {name!r}: its {stage} hook returned {type(returned).__name__}; return "
                             f"torchslim.StepResult(model=...)")
    _check_step_result(returned, name)
    _check_outputs(result.model, inputs, reference, name)
    json.loads(result.to_json())  # the run report of this step serialises

    with _probing(engine, fail_after=True) as probe:
        try:
            engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
        except StepError:
            pass
        else:
            raise AssertionError(f"{name!r}: a failure injected after the {stage} hook did not stop the run")
    _assert_untouched(before, model, f"a failed run of {name!r} changed the input model", untouched)

    if failing is not None:
        failing = dict(failing)
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
        _assert_untouched(fail_before, fail_model, f"a failing run of {name!r} changed its input model", untouched)

    if check_determinism:
        again = engine.run(model, recipe, example_inputs=inputs, **run_kwargs)
        first, second = model_snapshot(result.model), model_snapshot(again.model)
        problems = _differences(first, second, modes=False)
        assert not problems, (f"{name!r} is not deterministic for a fixed seed ({'; '.join(problems)}); "
                              f"seed randomness from context.seed / context.generator()")
    return returned


def _check_step_result(returned: "StepResult", name: str) -> None:
    from torch import nn

    assert isinstance(returned.model, nn.Module), f"{name!r}: StepResult.model must be an nn.Module"
    assert all(isinstance(row, dict) for row in returned.report), f"{name!r}: StepResult.report rows must be dicts"
    assert all(isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, str) for x in s)
               for s in returned.skipped), f"{name!r}: StepResult.skipped must hold (layer, reason) string pairs"
    try:
        json.dumps(returned.info)
        json.dumps(returned.report)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name!r}: StepResult.info and report must be JSON-serialisable: {exc}; "
                             f"convert tensors with float()/int()/.tolist()") from None


def _check_outputs(model: "nn.Module", inputs: tuple, reference: Any, name: str) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        output = model(*inputs)
    if isinstance(reference, torch.Tensor):
        assert isinstance(output, torch.Tensor) and output.shape == reference.shape, (
            f"{name!r}: the returned model's output {getattr(output, 'shape', type(output).__name__)} differs "
            f"from the input model's {tuple(reference.shape)}; methods must keep the model's interface")
        assert bool(torch.isfinite(output).all()), f"{name!r}: the returned model outputs NaN or inf"


# ---------------------------------------------------------------------------------------- evaluators
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

    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    before = model_snapshot(model)
    recipe = {"steps": [], "evaluate": [name]}
    metrics = engine.run(model, recipe, example_inputs=inputs, **run_kwargs).baseline
    _assert_untouched(before, model, f"evaluator {name!r} changed the input model", "measure a model, never edit it")
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


# ---------------------------------------------------------------------------------------- strategies
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


# ---------------------------------------------------------------------------------------- tiny task
@dataclass
class TinyTask:
    """A small classifier and a learnable synthetic task for plugin tests (CPU, well under a second).

    ``model`` is a :class:`torchslim.zoo.DigitsCNN` (convs, batch norm, linears) for ``N x 1 x 8 x 8``
    inputs and 4 classes; ``build()`` returns a fresh copy of the same initial weights.
    """

    model: Any
    train_data: Any
    eval_data: Any
    example_inputs: tuple
    seed: int = 0

    def build(self) -> Any:
        """A fresh model of the same architecture and initial weights (a ``base_model`` for load)."""
        return _tiny_model(self.seed)

    def run_kwargs(self) -> dict[str, Any]:
        """``train_data``, ``eval_data`` and ``example_inputs`` as :meth:`Engine.run` keywords."""
        return {"train_data": self.train_data, "eval_data": self.eval_data, "example_inputs": self.example_inputs}


def _tiny_model(seed: int) -> Any:
    import torch

    from .zoo import DigitsCNN

    torch.manual_seed(seed)
    return DigitsCNN(width=4, classes=4)


@functools.lru_cache(maxsize=8)
def _trained_state(seed: int, samples: int, batch_size: int, train_steps: int) -> dict:
    import torch

    task = tiny_task(seed, samples, batch_size)
    model = task.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    done = 0
    while done < train_steps:
        for inputs, target in task.train_data:
            loss = torch.nn.functional.cross_entropy(model(inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done >= train_steps:
                break
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_task(seed: int = 0, samples: int = 256, batch_size: int = 32, train_steps: int = 0) -> TinyTask:
    """Build a :class:`TinyTask`; ``train_steps`` > 0 trains the model first (Adam, lr 1e-2).

    Each class is a fixed random 8x8 pattern; inputs are the pattern of their class plus noise.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 1, 8, 8, generator=gen)
    y = torch.randint(0, 4, (samples,), generator=gen)
    x = prototypes[y] + 1.5 * torch.randn(samples, 1, 8, 8, generator=gen)
    split = samples * 3 // 4
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    test = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=batch_size)
    model = _tiny_model(seed)
    if train_steps:
        # trained once per process and settings; every call still gets its own model object
        model.load_state_dict(_trained_state(seed, samples, batch_size, train_steps))
    model.eval()
    return TinyTask(model=model, train_data=train, eval_data=test, example_inputs=(x[:8],), seed=seed)


# ---------------------------------------------------------------------------------------- fixtures
if pytest is not None:

    @pytest.fixture
    def torchslim_engine() -> "Engine":
        """An :class:`~torchslim.Engine` that discovered every installed plugin (fresh per test)."""
        from .engine import Engine

        return Engine()

    @pytest.fixture
    def torchslim_bare_engine() -> "Engine":
        """An :class:`~torchslim.Engine` without discovery: register only what the test needs."""
        from .engine import Engine

        return Engine(discover=False)

    @pytest.fixture
    def torchslim_tiny_task() -> TinyTask:
        """A :class:`TinyTask` with a briefly trained model (about 85 % test accuracy, 4 classes; chance is 25 %)."""
        return tiny_task(train_steps=30)
