"""The engine runs steps on a copy, measures each stage, and stops cleanly when a plugin fails."""

import copy
import json

import pytest
import torch

import torchslim
from helpers import Raises, ReturnsNaN, ReturnsWrongType, Scale, WeightNorm, bare_engine, same_state, state_copy, tiny_model

RECIPE = {
    "steps": [
        {"compress": {"method": "scale", "factor": 0.5, "targets": {"include": ["0"]}}},
        {"compress": {"method": "scale", "factor": 0.5}},
    ],
    "evaluate": ["weightnorm"],
    "constraints": {"max_drop": {"score": 1000.0}, "max_ratio": {"l1": 0.5}},
}


@pytest.fixture
def engine():
    return bare_engine((Scale(), "scale"), (WeightNorm(), "weightnorm"), (Raises(), "raises"),
                       (ReturnsWrongType(), "wrongtype"), (ReturnsNaN(), "nan"))


class CountsCopies(torch.nn.Sequential):
    """A model that counts how often it is deep-copied (the engine may copy it once per run)."""

    copies = 0

    def __deepcopy__(self, memo):
        type(self).copies += 1
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update({key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()})
        return clone


def test_one_run_deep_copies_the_callers_model_once(engine):
    torch.manual_seed(0)
    model = CountsCopies(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    CountsCopies.copies = 0
    result = engine.run(model, RECIPE, example_inputs=(torch.randn(2, 4),))
    assert CountsCopies.copies == 1 and result.model is not model


def test_run_works_on_a_copy_and_reports_every_stage(engine):
    model = tiny_model()
    before = state_copy(model)
    x = torch.randn(2, 4)
    result = engine.run(model, RECIPE, example_inputs=(x,))
    assert same_state(before, state_copy(model)), "the caller's model must not change"
    assert result.model is not model
    # first step halves layer 0 only, second halves both: layer 0 at 1/4, layer 2 at 1/2
    assert torch.allclose(result.model[0].weight, model[0].weight * 0.25)
    assert torch.allclose(result.model[2].weight, model[2].weight * 0.5)
    assert list(result.metrics) == ["baseline", "1 compress/scale", "2 compress/scale"]
    assert result.metrics["2 compress/scale"]["l1"] < result.metrics["1 compress/scale"]["l1"] < result.baseline["l1"]
    assert [r.report for r in result.steps][0] == [{"layer": "0"}]
    assert all(r.seconds >= 0 for r in result.steps)
    assert all(r.peak_memory_mb is None or r.peak_memory_mb >= 0 for r in result.steps)
    assert result.constraints_met
    table = result.table()
    assert "baseline" in table and "2 compress/scale" in table and "l1" in table
    data = json.loads(result.to_json())
    assert data["steps"][0]["options"] == {"factor": 0.5} and data["constraints_met"] is True


def test_failed_constraint_is_reported(engine):
    recipe = dict(RECIPE, constraints={"max_ratio": {"l1": 0.01}})
    result = engine.run(tiny_model(), recipe)
    assert not result.constraints_met
    assert "FAILED max_ratio.l1" in result.table()


@pytest.mark.parametrize(
    "method, expected",
    [
        ("raises", "step 2 (accelerate/raises) failed in plugin 'raises' from (runtime): RuntimeError: boom"),
        ("wrongtype", "step 2 (accelerate/wrongtype): plugin 'wrongtype' from (runtime) returned dict"),
        ("nan", "returned a model whose 0.weight holds NaN or inf values"),
    ],
)
def test_plugin_fault_stops_the_run_naming_step_and_plugin(engine, method, expected):
    model = tiny_model()
    before = state_copy(model)
    recipe = {"steps": [{"compress": {"method": "scale"}}, {"accelerate": {"method": method}}], "evaluate": []}
    with pytest.raises(torchslim.StepError) as info:
        engine.run(model, recipe)
    assert expected in str(info.value)
    if method == "raises":
        assert isinstance(info.value.__cause__, RuntimeError)
    assert same_state(before, state_copy(model))


def test_instrument_wrapper_times_every_stage_call(engine):
    result = engine.run(tiny_model(), {"steps": [{"compress": {"method": "scale"}}], "evaluate": []})
    assert result.steps[0].seconds > 0


def test_nested_step_runs_another_method(engine):
    class Twice:
        @torchslim.hookimpl
        def accelerate(self, model, step, context):
            for _ in range(2):
                model = context.run_step(model, {"compress": {"method": "scale", "factor": 0.5}}).model
            return torchslim.StepResult(model=model)

    engine.register(Twice(), name="twice")
    model = tiny_model()
    result = engine.run(model, {"steps": [{"accelerate": {"method": "twice"}}], "evaluate": []})
    assert torch.allclose(result.model[0].weight, model[0].weight * 0.25)


def test_same_seed_gives_identical_results(engine):
    class Noise:
        @torchslim.hookimpl
        def compress(self, model, step, context):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            return torchslim.StepResult(model=model)

    engine.register(Noise(), name="noise")
    recipe = {"steps": [{"compress": {"method": "noise"}}], "evaluate": []}
    a = engine.run(tiny_model(), recipe, seed=3).model
    b = engine.run(tiny_model(), recipe, seed=3).model
    c = engine.run(tiny_model(), recipe, seed=4).model
    assert same_state(state_copy(a), state_copy(b))
    assert not same_state(state_copy(a), state_copy(c))


def test_non_module_is_rejected(engine):
    with pytest.raises(torchslim.TorchslimError, match="must be a torch.nn.Module"):
        engine.run("not a model", RECIPE)


def test_hanging_plugin_stops_at_the_step_timeout(engine):
    import threading

    release = threading.Event()

    class Hangs:
        @torchslim.hookimpl
        def accelerate(self, model, step, context):
            release.wait(30)
            return torchslim.StepResult(model=model)

    engine.register(Hangs(), name="hangs")
    model = tiny_model()
    before = state_copy(model)
    recipe = {"steps": [{"accelerate": {"method": "hangs", "timeout": 0.5}}], "evaluate": []}
    try:
        with pytest.raises(torchslim.StepError, match=r"step 1 \(accelerate/hangs\): plugin 'hangs' .* did not finish within timeout=0.5s"):
            engine.run(model, recipe)
    finally:
        release.set()
    assert same_state(before, state_copy(model))
