"""Pre-flight check: what each step will touch, skip or fail on, and the MAC/params/size change."""

from __future__ import annotations

import json

import pytest
import torch

import torchslim
from torchslim.plugins.evaluators import Macs, Params, Size
from torchslim.preflight import PreflightReport, preflight
from torchslim.plugins.magnitude import MagnitudePruning

from helpers import Raises, Scale, bare_engine, same_state, state_copy
from zoo_models import ZOO

RECIPE = {
    "steps": [
        {"compress": {"method": "magnitude", "sparsity": 0.5}},
        {"accelerate": {"method": "svd", "mac_ratio": 0.5, "measure_latency": False}},
        {"finetune": {"method": "sgd", "epochs": 1}},
    ],
    "evaluate": ["params", "macs", "size"],
}


@pytest.fixture(scope="module")
def engine() -> torchslim.Engine:
    return torchslim.Engine()


def test_preflight_predicts_what_the_run_measures(engine):
    case = ZOO["residual"]()
    before = state_copy(case.model)
    report = preflight(engine, case.model, RECIPE, example_inputs=case.example_inputs, train_data=case.loader())
    assert same_state(before, case.model.state_dict()), "preflight changed the input model"

    magnitude, svd, sgd = report.steps
    assert (magnitude.status, svd.status, sgd.status) == ("ok", "ok", "not run")
    convs = {n for n, m in case.model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(magnitude.touched) == convs and all("masked" in what for what in magnitude.touched.values())
    assert magnitude.after["macs"] == report.baseline["macs"], "masks do not change the dense MACs"
    assert any("replaced by" in what for what in svd.touched.values())
    assert svd.after["macs"] <= 0.55 * report.baseline["macs"]
    assert svd.before == magnitude.after

    result = engine.run(case.model, RECIPE, train_data=case.loader(), eval_data=case.loader(),
                        example_inputs=case.example_inputs)
    assert report.final["macs"] == result.final["macs"]
    assert report.final["params"] == result.final["params"]
    assert report.final["size_bytes"] == pytest.approx(result.final["size_bytes"], rel=0.05)
    assert report.ok and report.ratios()["macs"] == pytest.approx(result.final["macs"] / result.baseline["macs"])


def test_a_failing_step_is_reported_and_the_check_goes_on():
    engine = bare_engine((Scale(), "scale"), (Raises(), "raises"))
    model = ZOO["mlp"]().model
    recipe = {"steps": [{"compress": {"method": "scale", "factor": 0.5}}, {"accelerate": {"method": "raises"}},
                        {"compress": {"method": "scale", "factor": 0.5, "targets": {"include": ["body.0"]}}}],
              "evaluate": []}
    report = preflight(engine, model, recipe, example_inputs=(torch.randn(2, 12),))
    first, failing, last = report.steps
    assert failing.status == "cannot handle" and not report.ok
    assert "'raises'" in failing.error and "RuntimeError: boom" in failing.error
    assert last.status == "ok" and list(last.touched) == ["body.0"]
    assert last.before == first.after, "the check must go on from the model before the failing step"
    assert set(first.touched) == {"body.0", "body.4", "body.6"}
    assert all(what == "weight changed" for what in first.touched.values())
    text = report.table()
    assert "2 accelerate/raises" in text and "cannot handle" in text and "RuntimeError: boom" in text


def test_skipped_layers_and_their_reasons_are_listed(engine):
    case = ZOO["depthwise"]()
    report = preflight(engine, case.model, {"steps": [{"accelerate": {"method": "svd", "rank_ratio": 0.5,
                                                                       "measure_latency": False}}]},
                       example_inputs=case.example_inputs)
    (step,) = report.steps
    skipped = dict(step.skipped)
    assert "dw" in skipped and skipped["dw"].strip(), "the depthwise conv must be skipped with a reason"
    assert "dw" not in step.touched
    assert f"skips dw: {skipped['dw']}" in report.table()


def test_a_step_whose_model_no_longer_runs_is_caught():
    """A method that returns a model failing its forward pass is 'cannot handle', not 'ok'."""

    class Breaks:
        @torchslim.hookimpl
        def accelerate(self, model, step, context):
            model.body[0] = torch.nn.Linear(5, 32)  # wrong input width
            return torchslim.StepResult(model=model)

    engine = bare_engine((Breaks(), "breaks"))
    report = preflight(engine, ZOO["mlp"]().model, {"steps": [{"accelerate": {"method": "breaks"}}], "evaluate": []},
                       example_inputs=(torch.randn(2, 12),))
    assert report.steps[0].status == "cannot handle"
    assert "fails on the example inputs" in report.steps[0].error and "RuntimeError" in report.steps[0].error


def test_report_serialises_and_takes_inputs_from_data():
    engine = bare_engine((MagnitudePruning(), "magnitude"), (Macs(), "macs"), (Params(), "params"), (Size(), "size"))
    case = ZOO["bn_cnn"]()
    report = preflight(engine, case.model, {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.9}}],
                                            "evaluate": []}, eval_data=case.loader())
    assert isinstance(report, PreflightReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["steps"][0]["status"] == "ok" and data["baseline"]["macs"] > 0
    assert data["final"]["size_bytes"] < data["baseline"]["size_bytes"]
    assert data["ratios"]["params"] == 1.0


def test_bad_recipe_and_bad_inputs_raise_clear_errors(engine):
    model = ZOO["mlp"]().model
    with pytest.raises(torchslim.RecipeError, match="sparsity"):
        preflight(engine, model, {"steps": [{"compress": {"method": "magnitude", "sparsity": 2}}]})
    with pytest.raises(torchslim.DataError, match="example_inputs"):
        preflight(engine, model, {"steps": []}, example_inputs=(torch.zeros(1, 3),))


def test_search_is_listed_not_run(engine):
    case = ZOO["mlp"]()
    recipe = {"steps": [], "evaluate": ["macs"],
              "search": {"target": {"macs": 0.5}, "methods": [{"accelerate": {"method": "svd"}}]}}
    report = preflight(engine, case.model, recipe, example_inputs=case.example_inputs)
    assert report.steps == [] and "not dry-run" in report.search and "accelerate/svd" in report.search
