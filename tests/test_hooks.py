"""One test per hook of the plugin contract (tests/test_docs.py checks that each hook has one)."""

import pytest
import torch
from torch import nn

import torchslim
from torchslim.registry import PluginRegistry, module_kind_name
from helpers import Scale, WeightNorm, bare_engine, tiny_model


class Recorder:
    """Plugin with one implementation per stage, recording what the engine passed."""

    def __init__(self, stage):
        self.calls = []

        def impl(model, step, context):
            self.calls.append((step, context))
            return torchslim.StepResult(model=model, info={"seen": step.method})

        setattr(self, stage, torchslim.hookimpl(impl))


@pytest.mark.parametrize("stage", ["compress", "accelerate", "finetune"])
def test_hook_compress_accelerate_finetune_call_only_the_named_method(stage):
    first, second = Recorder(stage), Recorder(stage)
    engine = bare_engine((first, "first"), (second, "second"))
    x = torch.randn(3, 4)
    result = engine.run(tiny_model(), {"steps": [{stage: {"method": "second"}}], "evaluate": []},
                        example_inputs=(x,), seed=7, train_data=[(x, torch.zeros(3, dtype=torch.long))])
    assert first.calls == [] and len(second.calls) == 1
    step, context = second.calls[0]
    assert step.stage == stage and step.method == "second"
    assert context.seed == 7 and context.step_index == 1 and torch.equal(context.example_inputs[0], x)
    assert context.original_model is not None and not context.original_model.training
    assert all(not p.requires_grad for p in context.original_model.parameters())
    assert result.steps[0].info == {"seen": "second"}


def test_hook_compress_receives_typed_options():
    engine = bare_engine((Scale(), "scale"))
    seen = []

    class Spy:
        @torchslim.hookimpl(wrapper=True)
        def compress(self, model, step, context):
            seen.append(step.options)
            return (yield)

    engine.registry.pm.register(Spy())
    engine.run(tiny_model(), {"steps": [{"compress": {"method": "scale", "factor": 0.25}}], "evaluate": []})
    assert isinstance(seen[0], Scale.Options) and seen[0].factor == 0.25


def test_hook_evaluate_merges_only_the_evaluators_the_recipe_names():
    class Other:
        metrics = {"other": "higher"}

        @torchslim.hookimpl
        def evaluate(self, model, context):
            raise AssertionError("not asked for, must not run")

    engine = bare_engine((WeightNorm(), "weightnorm"), (Other(), "other"))
    result = engine.run(tiny_model(), {"steps": [], "evaluate": ["weightnorm"]})
    assert set(result.baseline) == {"l1", "score"}
    assert engine.registry.directions()["l1"] == "lower"


def test_hook_register_strategies_lets_users_run_by_name():
    class Company:
        @torchslim.hookimpl
        def register_strategies(self, register):
            register("acme-halve", {"steps": [{"compress": {"method": "scale", "factor": 0.5}}], "evaluate": []},
                     description="ACME's preset")

    engine = bare_engine((Scale(), "scale"), (Company(), "acme"))
    strategy = engine.registry.strategies["acme-halve"]
    assert strategy.description == "ACME's preset" and strategy.owner == "acme"
    model = tiny_model()
    result = engine.run(model, "acme-halve")
    assert torch.allclose(result.model[0].weight, model[0].weight * 0.5)
    with pytest.raises(torchslim.PluginError, match="two plugins register the strategy 'acme-halve'"):
        engine.register(Company(), name="acme2")
    engine.unregister("acme")
    assert "acme-halve" not in engine.registry.strategies


class Doubler(nn.Module):
    """A custom module kind: y = 2 * linear(x)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.inner = nn.Linear(features, features)

    def forward(self, x):
        return 2 * self.inner(x)

    def torchslim_spec(self):
        return {"features": self.inner.in_features}

    @classmethod
    def from_torchslim_spec(cls, spec):
        return cls(**spec)


def test_hook_register_module_kinds_collects_rebuildable_classes():
    class Kinds:
        @torchslim.hookimpl
        def register_module_kinds(self, register):
            register(Doubler)

    class NotAKind:
        @torchslim.hookimpl
        def register_module_kinds(self, register):
            register(nn.Linear)

    registry = PluginRegistry(discover=False)
    registry.register(Kinds(), name="kinds")
    assert registry.module_kinds[module_kind_name(Doubler)] is Doubler
    with pytest.raises(torchslim.PluginError, match="lacks torchslim_spec"):
        registry.register(NotAKind(), name="bad")
    registry.unregister("kinds")
    assert module_kind_name(Doubler) not in registry.module_kinds


class CountingRuntime(nn.Module):
    """A stand-in runtime artifact: runs the model it wraps and counts the calls."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_hook_deploy_runs_last_and_every_evaluator_measures_its_artifact():
    class Counting:
        @torchslim.hookimpl
        def deploy(self, model, step, context):
            return torchslim.StepResult(model=CountingRuntime(model).eval(), info={"runtime": "counting"})

    engine = bare_engine((Scale(), "scale"), (Counting(), "counting"), (WeightNorm(), "weightnorm"))
    x = torch.randn(3, 4)
    recipe = {"steps": [{"compress": {"method": "scale"}}, {"deploy": {"method": "counting"}}], "evaluate": ["weightnorm"]}
    result = engine.run(tiny_model(), recipe, example_inputs=(x,))
    assert isinstance(result.model, CountingRuntime) and result.steps[-1].label == "deploy/counting"
    assert result.model.calls >= 1  # the engine's interface check ran the artifact on the example inputs
    with pytest.raises(torchslim.RecipeError, match="deploy step but step 2 .* follows it"):
        engine.recipe({"steps": [{"deploy": {"method": "counting"}}, {"compress": {"method": "scale"}}]})
