"""The plugin author kit (torchslim.testing): it passes honest plugins and catches each broken rule."""

import textwrap

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import torchslim
from torchslim.testing import (
    check_evaluator_plugin,
    check_method_plugin,
    check_strategy,
    register_inline_plugin,
    tiny_task,
)


class Halve:
    """An honest compress method: multiplies targeted weights by ``factor``."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(0.5, gt=0, le=1, description="multiplier", json_schema_extra={"strength": True})

    @torchslim.hookimpl
    def compress(self, model, step, context):
        rows = []
        with torch.no_grad():
            for name, module in torchslim.select_modules(model, step.targets):
                torchslim.masks.write_weight(module, "weight", module.weight * step.options.factor)
                rows.append({"layer": name, "factor": step.options.factor})
        return torchslim.StepResult(model=model, report=rows, info={"layers": len(rows)})


class SkipsMaskedLayers(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        with torch.no_grad():  # on a masked layer, module.weight is a temporary: this changes nothing
            for name, module in torchslim.select_modules(model, step.targets):
                module.weight.mul_(step.options.factor)
        return torchslim.StepResult(model=model)


class RaggedReport(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        return torchslim.StepResult(model=model, report=[{"layer": "a"}, {"layer": "b", "rank": 2}])


class LaxOptions(Halve):
    class Options(BaseModel):  # no extra="forbid": a misspelt option would be ignored silently
        factor: float = Field(0.5, gt=0, le=1, description="multiplier")


class Unconstrained(Halve):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(0.5, description="multiplier")  # accepts factor=-3


class TrainsTheTeacher(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        with torch.no_grad():
            next(context.original_model.parameters()).zero_()
        return torchslim.StepResult(model=model)


class ReturnsModel(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        return model  # the contract asks for a StepResult


class TensorInInfo(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        return torchslim.StepResult(model=model, info={"norm": torch.tensor(1.0)})


class Unseeded(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(torch.seed() % 2**31)))
        return torchslim.StepResult(model=model)


class ChangesInterface(Halve):
    @torchslim.hookimpl
    def compress(self, model, step, context):
        return torchslim.StepResult(model=torch.nn.Sequential(model, torch.nn.Linear(4, 2)))


class GoodMetric:
    metrics = {"weight_l1": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model, context):
        return {"weight_l1": float(sum(p.detach().abs().sum() for p in model.parameters()))}


class UndeclaredMetric(GoodMetric):
    @torchslim.hookimpl
    def evaluate(self, model, context):
        return {"weight_l1": 1.0, "extra": 2.0}


class NeedsData(GoodMetric):
    @torchslim.hookimpl
    def evaluate(self, model, context):
        return {"weight_l1": float(len(context.example_inputs[0]))}


@pytest.fixture
def task(torchslim_tiny_task):
    return torchslim_tiny_task


def test_fixtures_are_provided_by_the_pytest11_entry_point(torchslim_engine, torchslim_bare_engine,
                                                           torchslim_tiny_task):
    assert "sgd" in torchslim_engine.methods("finetune")
    assert torchslim_bare_engine.methods("finetune") == []
    assert torchslim_tiny_task.build()(*torchslim_tiny_task.example_inputs).shape == (8, 4)


def test_tiny_task_is_learnable():
    trained = tiny_task(train_steps=30)
    x, y = next(iter(trained.eval_data))
    assert (trained.model(x).argmax(1) == y).float().mean() > 0.5  # chance is 0.25


def test_register_inline_plugin_unregisters_even_when_the_block_fails(torchslim_bare_engine):
    with pytest.raises(RuntimeError, match="inside"):
        with register_inline_plugin(torchslim_bare_engine, Halve, "halve") as plugin:
            assert isinstance(plugin, Halve) and torchslim_bare_engine.methods("compress") == ["halve"]
            raise RuntimeError("inside")
    assert torchslim_bare_engine.methods("compress") == []


def test_an_honest_method_passes_and_its_step_result_is_returned(torchslim_bare_engine, task):
    with register_inline_plugin(torchslim_bare_engine, Halve, "halve"):
        result = check_method_plugin(torchslim_bare_engine, "halve", task.model, task.example_inputs,
                                     good_options={"factor": 0.5}, bad_options={"factor": 2.0},
                                     stage="compress")
    assert result.info == {"layers": 5}


def test_builtin_sgd_passes_including_a_failing_run(torchslim_engine, task):
    check_method_plugin(torchslim_engine, "sgd", task.model, task.example_inputs,
                        good_options={"steps": 3, "lr": 0.01}, bad_options={"lr": -1, "optimizer": "lbfgs"},
                        failing={"train_data": None}, train_data=task.train_data)


@pytest.mark.parametrize("plugin, match", [
    (LaxOptions, "extra='forbid'"),
    (Unconstrained, "accepted bad option factor=-3"),
    (TrainsTheTeacher, "changed context.original_model"),
    (ReturnsModel, "returned a bare DigitsCNN module"),
    (SkipsMaskedLayers, "leaves them as they were without listing them in skipped"),
    (RaggedReport, "report rows must share their keys"),
    (TensorInInfo, "JSON-serialisable"),
    (Unseeded, "not deterministic"),
    (ChangesInterface, "changed the model's outputs"),
])
def test_each_broken_rule_is_caught(torchslim_bare_engine, task, plugin, match):
    with register_inline_plugin(torchslim_bare_engine, plugin, "broken"):
        with pytest.raises(AssertionError, match=match):
            check_method_plugin(torchslim_bare_engine, "broken", task.model, task.example_inputs,
                                good_options={"factor": 0.5}, bad_options={"factor": -3})
    assert torchslim_bare_engine.methods("compress") == []


def test_the_kit_takes_a_task_or_its_run_kwargs(torchslim_bare_engine, task):
    with register_inline_plugin(torchslim_bare_engine, Halve, "halve"):
        check_method_plugin(torchslim_bare_engine, "halve", task.model, **task.run_kwargs(),
                            good_options={"factor": 0.5}, check_determinism=False)
        check_method_plugin(torchslim_bare_engine, "halve", task=task, good_options={"factor": 0.5},
                            check_determinism=False)


def test_wrong_stage_and_unknown_name_are_reported(torchslim_bare_engine, task):
    with register_inline_plugin(torchslim_bare_engine, Halve, "halve"):
        with pytest.raises(AssertionError, match="implements 'compress', expected 'finetune'"):
            check_method_plugin(torchslim_bare_engine, "halve", task.model, task.example_inputs, stage="finetune")
    with pytest.raises(AssertionError, match="no plugin is registered under 'halve'"):
        check_method_plugin(torchslim_bare_engine, "halve", task.model, task.example_inputs)


def test_a_failing_run_that_does_not_fail_is_reported(torchslim_bare_engine, task):
    with register_inline_plugin(torchslim_bare_engine, Halve, "halve"):
        with pytest.raises(AssertionError, match="did not fail"):
            check_method_plugin(torchslim_bare_engine, "halve", task.model, task.example_inputs,
                                failing={"options": {"factor": 1.0}}, check_determinism=False)


def test_evaluators(torchslim_bare_engine, torchslim_engine, task):
    with register_inline_plugin(torchslim_bare_engine, GoodMetric, "l1"):
        metrics = check_evaluator_plugin(torchslim_bare_engine, "l1", task.model, task.example_inputs)
    assert metrics["weight_l1"] > 0
    for broken, match in ((UndeclaredMetric, r"returned metrics \['extra'\] it does not declare"),
                          (NeedsData, "no data and no example inputs")):
        with register_inline_plugin(torchslim_bare_engine, broken, "broken"):
            with pytest.raises(AssertionError, match=match):
                check_evaluator_plugin(torchslim_bare_engine, "broken", task.model, task.example_inputs)
    acc = check_evaluator_plugin(torchslim_engine, "accuracy", task.model, task.example_inputs,
                                 eval_data=task.eval_data)
    assert 0.25 < acc["accuracy"] <= 1.0
    check_evaluator_plugin(torchslim_engine, "params", task.model, task.example_inputs)


def test_builtin_strategies_validate(torchslim_engine):
    recipe = check_strategy(torchslim_engine, "prune-80", distribution="torchslim")
    assert [s.method for s in recipe.steps] == ["magnitude", "sgd"]
    with pytest.raises(AssertionError, match="no strategy 'nope'"):
        check_strategy(torchslim_engine, "nope")


def test_the_minimal_plugin_of_the_hook_reference_passes_the_kit(torchslim_bare_engine, task):
    doc = torchslim.hookspecs.__doc__
    code = textwrap.dedent(doc.split("Minimal method plugin::", 1)[1])
    namespace: dict = {}
    exec(compile(code, "hookspecs.__doc__", "exec"), namespace)
    with register_inline_plugin(torchslim_bare_engine, namespace["HalveWeights"], "halve"):
        result = check_method_plugin(torchslim_bare_engine, "halve", task=task, good_options={"factor": 0.5})
    assert isinstance(result, torchslim.StepResult)
