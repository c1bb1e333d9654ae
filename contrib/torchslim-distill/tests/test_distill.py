"""torchslim-distill, tested as its users run it: installed with pip, found through its entry point."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

import torchslim
from torchslim.training import TrainingOptions
from torchslim.testing import check_method_plugin, register_inline_plugin
from torchslim_distill import DistillOptions, feature_loss, feature_scales, kd_loss

BENCH = Path(__file__).resolve().parents[3] / "bench" / "distill.py"
PRUNE_90 = {"compress": {"method": "magnitude", "sparsity": 0.9, "scope": "global"}}


class NarrowFc1:
    """Compress method that replaces fc1/fc2 by narrower layers (as channel pruning would)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @torchslim.hookimpl
    def compress(self, model, step, context):
        model.fc1 = nn.Linear(model.fc1.in_features, 64)
        model.fc2 = nn.Linear(64, model.fc2.out_features)
        return torchslim.StepResult(model=model)


def test_distill_honours_the_plugin_contract(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    info = torchslim_engine.registry.infos["distill"]
    assert info.distribution == "torchslim-distill" and info.stages == ("finetune",)
    result = check_method_plugin(
        torchslim_engine, "distill", task.model, task.example_inputs,
        good_options={"steps": 3, "features": ["conv3", "fc1"]},
        bad_options={"temperature": 0, "kd_weight": -1, "features": "fc1", "optimizer": "lbfgs"},
        failing={"train_data": None}, train_data=task.train_data)
    assert result.info["distill"]["features"] == ["conv3", "fc1"]
    assert set(result.info["distill"]["final_terms"]) == {"kd", "task", "features"}


def test_it_takes_every_sgd_option():
    assert set(TrainingOptions.model_fields) < set(DistillOptions.model_fields)
    opts = DistillOptions(optimizer="adamw", steps=5, schedule="constant", warmup_steps=2, grad_clip=1.0)
    assert opts.temperature == 1.0 and opts.kd_weight == 1.0 and opts.task_weight == 1.0
    assert opts.features == "auto" and opts.feature_weight == 5.0


def test_nothing_to_learn_is_rejected_before_any_work(torchslim_engine):
    for features in ({"features": []}, {"feature_weight": 0}):
        recipe = {"steps": [{"finetune": {"method": "distill", "kd_weight": 0, "task_weight": 0, **features}}]}
        with pytest.raises(torchslim.RecipeError, match="kd_weight, task_weight and feature_weight"):
            torchslim_engine.recipe(recipe)
    # features alone (auto by default) are something to learn
    torchslim_engine.recipe({"steps": [{"finetune": {"method": "distill", "kd_weight": 0, "task_weight": 0}}]})


def test_kd_loss_is_temperature_scaled_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    expected = F.kl_div(F.log_softmax(student / 3, 1), F.log_softmax(teacher / 3, 1), log_target=True,
                        reduction="batchmean") * 9
    assert torch.allclose(kd_loss(student, teacher, 3.0), expected)
    assert float(kd_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-7)
    # per position for (N, C, T) outputs, as cross-entropy reads them
    seq_s, seq_t = torch.randn(2, 10, 5), torch.randn(2, 10, 5)
    flat = kd_loss(seq_s.transpose(1, 2).reshape(-1, 10), seq_t.transpose(1, 2).reshape(-1, 10), 2.0)
    assert torch.allclose(kd_loss(seq_s, seq_t, 2.0), flat)


def test_feature_loss_is_relative_squared_error():
    torch.manual_seed(0)
    teacher = torch.randn(4, 8, 5, 5)
    assert float(feature_loss(teacher, teacher)) == 0.0
    assert float(feature_loss(torch.zeros_like(teacher), 100 * teacher)) == pytest.approx(1.0)
    student = teacher + 0.1 * torch.randn_like(teacher)
    # the same relative error whatever the layer's scale
    assert float(feature_loss(1000 * student, 1000 * teacher)) == pytest.approx(float(feature_loss(student, teacher)))
    # the step fixes each layer's scale once (over all ranks), so the loss is a plain mean over samples
    scales = feature_scales({"conv": teacher, "dead": torch.zeros(4, 3)})
    assert torch.allclose(scales["conv"], teacher.pow(2).mean()) and float(scales["dead"]) == 1.0
    halves = [feature_loss(student[i:i + 2], teacher[i:i + 2], scales["conv"]) for i in (0, 2)]
    assert torch.allclose((halves[0] + halves[1]) / 2, feature_loss(student, teacher, scales["conv"]))


def test_auto_features_match_every_same_shaped_layer_with_weights(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    recipe = {"steps": [PRUNE_90, {"finetune": {"method": "distill", "steps": 2}}], "evaluate": []}
    info = torchslim_engine.run(task.model, recipe, train_data=task.train_data).steps[1].info["distill"]
    layers = [n for n, m in task.model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    # masked layers count; parameter-free modules (pooling) and the logits layer (the KL has it) do not
    assert info["features"] == [n for n in layers if n != "fc2"] and "pool" not in info["features"]
    assert set(info["final_terms"]) == {"kd", "task", "features"}
    # a layer another method narrowed is skipped, not an error; the others are still matched
    narrowed = {"steps": [{"compress": {"method": "narrow"}}, {"finetune": {"method": "distill", "steps": 2}}],
                "evaluate": []}
    with register_inline_plugin(torchslim_engine, NarrowFc1, "narrow"):
        info = torchslim_engine.run(task.model, narrowed, train_data=task.train_data).steps[1].info["distill"]
    assert "fc1" not in info["features"] and "conv3" in info["features"]
    off = {"steps": [{"finetune": {"method": "distill", "steps": 2, "features": []}}], "evaluate": []}
    info = torchslim_engine.run(task.model, off, train_data=task.train_data).steps[0].info["distill"]
    assert info["features"] == [] and set(info["final_terms"]) == {"kd", "task"}


def test_pure_distillation_learns_from_the_teacher_without_labels(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    unlabelled = [x for x, _ in task.train_data]  # batches without targets
    recipe = {"steps": [PRUNE_90, {"finetune": {"method": "distill", "task_weight": 0, "kd_weight": 1,
                                                "epochs": 3, "lr": 0.05}}], "evaluate": []}
    result = torchslim_engine.run(task.model, recipe, train_data=unlabelled, eval_data=task.eval_data)
    pruned_only = torchslim_engine.run(task.model, {"steps": [PRUNE_90], "evaluate": []}).model
    x = torch.cat(unlabelled)
    with torch.no_grad():
        teacher = task.model.eval()(x)
        before = kd_loss(pruned_only.eval()(x), teacher, 1.0)
        after = kd_loss(result.model.eval()(x), teacher, 1.0)
    assert after < 0.5 * before
    with pytest.raises(torchslim.StepError, match="has no target"):  # labels are needed once task_weight > 0
        torchslim_engine.run(task.model, {"steps": [{"finetune": {"method": "distill", "steps": 1}}],
                                          "evaluate": []}, train_data=unlabelled)


def test_unknown_feature_module_is_named_with_the_real_names(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    recipe = {"steps": [{"finetune": {"method": "distill", "steps": 1, "features": ["fc_1"]}}], "evaluate": []}
    with pytest.raises(torchslim.StepError, match=r"features names 'fc_1'.*module names look like conv1"):
        torchslim_engine.run(task.model, recipe, train_data=task.train_data)


def test_feature_shape_mismatch_is_a_clear_error(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    recipe = {"steps": [{"compress": {"method": "narrow"}},
                        {"finetune": {"method": "distill", "steps": 1, "features": ["fc1"]}}], "evaluate": []}
    with register_inline_plugin(torchslim_engine, NarrowFc1, "narrow"):
        with pytest.raises(torchslim.StepError, match=r"feature 'fc1' has shape \(32, 64\) in the compressed "
                                                      r"model but \(32, 128\) in the teacher"):
            torchslim_engine.run(task.model, recipe, train_data=task.train_data)
        ok = {"steps": recipe["steps"][:1] + [{"finetune": {"method": "distill", "steps": 1}}], "evaluate": []}
        torchslim_engine.run(task.model, ok, train_data=task.train_data)  # logits still match: fine


@pytest.mark.skipif(not BENCH.is_file(), reason="the torchslim source tree (bench/) is not here")
def test_bench_quick_runs(tmp_path):
    out = tmp_path / "distill.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distill - sgd (points)" in proc.stdout and out.is_file()
