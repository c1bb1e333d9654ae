"""The built-in ``magnitude`` compress method, through Engine.run and through ``prune()``."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SUBPROCESS_TIMEOUT
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.demo import digits_loaders
from torchslim.masks import get_mask, masked_parameters
from torchslim.plugins.magnitude import MagnitudePruning, cubic_schedule, prune
from torchslim.plugins.magnitude.admm import admm_prune
from torchslim.plugins.magnitude.reconstruct import exact_update, output_error, sparsegpt
from torchslim.targets import HFConv1D
from torchslim.testing import check_method_plugin, tiny_task
from torchslim.zoo import MLP, DigitsCNN

REPO = Path(__file__).resolve().parents[1]





@pytest.fixture(scope="module")
def trained_mlp(digits) -> nn.Module:
    """An MLP trained on the real digits data (about 97% test accuracy)."""
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = MLP((64, 128, 64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(x_train), (64,))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def sparsity(tensor: torch.Tensor) -> float:
    return float((tensor == 0).sum()) / tensor.numel()


def layer_output_error(pruned: nn.Module, dense: nn.Module, layer: int, x: torch.Tensor) -> float:
    """Mean squared error of layer ``net[layer]``'s output on its real inputs from ``x``."""
    seen = {}
    handle = dense.net[layer].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        dense(x)
        handle.remove()
        return float((pruned.net[layer](seen["x"]) - dense.net[layer](seen["x"])).pow(2).mean())


# ------------------------------------------------------------------------------------ engine path

def test_plugin_honours_the_contract(engine):
    task = tiny_task()
    check_method_plugin(
        engine, "magnitude", task.model, task.example_inputs,
        good_options={"sparsity": 0.6, "scope": "global"},
        bad_options={"sparsity": 1.0, "scope": "everywhere", "pattern": "4:2", "norm": "l3"},
        stage="compress",
        failing={"options": {"threshold": 1e9}},
        train_data=task.train_data, eval_data=task.eval_data,
    )


def test_recipe_prunes_and_fine_tunes_with_masks_kept(engine):
    train, test = digits_loaders(batch_size=128)
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    recipe = {
        "steps": [
            {"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
            {"finetune": {"method": "sgd", "epochs": 1, "lr": 0.05, "max_batches_per_epoch": 4}},
        ],
        "evaluate": ["nonzeros", "params"],
    }
    result = engine.run(model, recipe, train_data=train, eval_data=test)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # the user's model is untouched
    record = result.steps[0]
    assert record.info["sparsity"] == pytest.approx(0.8, abs=1e-5)
    assert {"layer", "shape", "sparsity_before", "sparsity_after", "kept"} <= set(record.report[0])
    assert [row["layer"] for row in record.report] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    masked = masked_parameters(result.model)
    assert len(masked) == 5
    for _, module, name, mask in masked:  # fine-tuning moved the kept weights but never the pruned ones
        assert torch.all(getattr(module, name)[~mask] == 0)


def test_options_reject_bad_values_naming_the_field(engine):
    for options, field in [({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"),
                           ({"pattern": "2:2"}, "pattern"), ({"threshold": -1}, "threshold"),
                           ({"sparsity": 0.5, "threshold": 0.1}, "threshold"),
                           ({"pattern": "2:4", "sparsity": 0.7}, "2:4"),
                           ({"min_sparsity": 0.6, "max_sparsity": 0.5}, "min_sparsity"),
                           ({"rounds": 1, "between": {"method": "sgd"}}, "between"),
                           ({"rounds": 3, "between": {"epochs": 1}}, "between")]:
        with pytest.raises(torchslim.RecipeError, match=field):
            engine.recipe({"steps": [{"compress": {"method": "magnitude", **options}}]})


# --------------------------------------------------------------------------- sparsity and scope

def test_layer_scope_prunes_every_tensor_to_the_sparsity_exactly():
    model = DigitsCNN(width=8)
    result = prune(model, sparsity=0.7, scope="layer")
    for row in result.report:
        n = math.prod(row["shape"])
        assert n - row["kept"] == round(0.7 * n)
    assert [r for r in result.report if r["layer"] == "fc1"][0]["sparsity_after"] == pytest.approx(0.7, abs=1e-3)


def test_global_scope_hits_the_total_exactly_and_ranks_across_layers():
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    weights = [m.weight.detach().clone() for m in (model.conv1, model.conv2, model.conv3, model.fc1, model.fc2)]
    result = prune(model, sparsity=0.7, scope="global")
    total = sum(w.numel() for w in weights)
    assert sum(r["kept"] for r in result.report) == total - round(0.7 * total)
    per_layer = [r["sparsity_after"] for r in result.report]
    assert max(per_layer) - min(per_layer) > 0.2  # layers differ: one threshold for all
    # every kept weight is at least as large as every pruned one, across layers
    flat = torch.cat([w.abs().flatten() for w in weights])
    kept = torch.cat([m.weight.detach().flatten() != 0
                      for m in (model.conv1, model.conv2, model.conv3, model.fc1, model.fc2)])
    assert flat[kept].min() >= flat[~kept].max()


def test_global_scope_respects_per_layer_bounds_and_still_hits_the_total():
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    result = prune(model, sparsity=0.7, scope="global", min_sparsity=0.3, max_sparsity=0.75)
    per_layer = {r["layer"]: r["sparsity_after"] for r in result.report}
    assert all(0.3 - 1e-3 <= s <= 0.75 + 1e-3 for s in per_layer.values()), per_layer
    assert result.info["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert result.info["bounds_met_exactly"]


def test_row_scope_prunes_each_output_row_equally():
    layer = nn.Sequential(nn.Linear(20, 6))
    prune(layer, sparsity=0.5, scope="row")
    assert torch.all((layer[0].weight == 0).sum(1) == 10)


def test_threshold_prunes_small_weights_only():
    layer = nn.Sequential(nn.Linear(10, 4))
    original = layer[0].weight.detach().clone()
    prune(layer, threshold=0.1)
    assert torch.equal(layer[0].weight == 0, original.abs() < 0.1)


def test_rnn_weight_matrices_are_pruned_and_biases_and_norms_are_not():
    model = nn.Sequential(nn.LSTM(8, 6, num_layers=2), )
    model.add_module("norm", nn.LayerNorm(6))
    result = prune(model, sparsity=0.5)
    assert {r["tensor"] for r in result.report} == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    lstm = model[0]
    assert sparsity(lstm.weight_hh_l1) == pytest.approx(0.5, abs=0.01)
    assert sparsity(lstm.bias_ih_l0) == 0 and sparsity(model.norm.weight) == 0
    model[0](torch.randn(5, 2, 8))  # still runs


def test_include_bias_prunes_biases_too():
    model = nn.Sequential(nn.Linear(10, 40))
    result = prune(model, sparsity=0.5, include_bias=True)
    assert {r["tensor"] for r in result.report} == {"weight", "bias"}
    assert sparsity(model[0].bias) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ patterns

def test_two_of_four_keeps_two_in_every_group_along_the_input_dimension():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Conv1d(8, 4, 3))
    conv = nn.Conv2d(8, 6, 3)
    model.add_module("conv", conv)
    result = prune(model, pattern="2:4")
    linear = model[0].weight.detach()
    assert torch.all((linear.reshape(8, 4, 4) != 0).sum(-1) == 2)
    conv_groups = conv.weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # input channels at each position
    assert torch.all((conv_groups != 0).sum(-1) == 2)
    assert result.info["sparsity"] == pytest.approx(0.5)


def test_two_of_four_keeps_the_largest_two_of_each_group():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -3.0, 2.0, 0.5]]))
    prune(model, pattern="2:4")
    assert torch.equal(model[0].weight.detach(), torch.tensor([[0.0, -3.0, 2.0, 0.0]]))


def test_n_of_m_skips_and_reports_layers_smaller_than_m():
    model = DigitsCNN(width=8)  # conv1 has one input channel
    result = prune(model, pattern="2:4")
    reasons = dict(result.skipped)
    assert "conv1.weight" in reasons and "smaller than M=4" in reasons["conv1.weight"]
    assert get_mask(model.conv1, "weight") is None and sparsity(model.conv1.weight) == 0
    assert sparsity(model.fc1.weight) == pytest.approx(0.5)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_structured_prunes_whole_rows_with_their_biases(norm):
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.1, 2.0, 10).unsqueeze(1))  # rows of clearly different norms
    model = nn.Sequential(layer)
    prune(model, pattern="structured", sparsity=0.3, norm=norm, include_bias=True)
    zero_rows = (layer.weight == 0).all(1)
    assert int(zero_rows.sum()) == 3
    assert torch.all((layer.weight[~zero_rows] != 0).all(1))
    assert torch.equal(layer.bias == 0, zero_rows)
    assert zero_rows[:3].all()  # the rows of smallest norm


def test_structured_conv_prunes_output_channels_globally():
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    result = prune(model, pattern="structured", sparsity=0.5, scope="global")
    channels = (model.conv2.weight.detach().flatten(1) == 0).all(1)
    assert torch.equal((model.conv2.weight.detach().flatten(1) != 0).any(1), ~channels)
    total_rows = sum(r["shape"][0] for r in result.report)
    zero_rows = sum(int((m.weight.detach().flatten(1) == 0).all(1).sum())
                    for m in (model.conv1, model.conv2, model.conv3, model.fc1, model.fc2))
    assert zero_rows == round(0.5 * total_rows)


# ---------------------------------------------------------------------- activation, reconstruct

def test_activation_criterion_beats_weight_criterion_on_a_trained_layer(trained_mlp, digits):
    x_train, _, x_test, _ = digits
    calibration = [(x_train[i:i + 128],) for i in range(0, 512, 128)]
    errors = {}
    for criterion in ("weight", "activation"):
        model = copy.deepcopy(trained_mlp)
        result = prune(model, sparsity=0.5, criterion=criterion, calibration=calibration,
                       targets={"include": ["net.0"]})
        assert result.report[0]["criterion"] == criterion
        errors[criterion] = layer_output_error(model, trained_mlp, 0, x_test)
    assert errors["activation"] < 0.5 * errors["weight"], errors


def test_reconstruct_beats_pruning_without_it_on_held_out_data(trained_mlp, digits):
    x_train, _, x_test, y_test = digits
    calibration = [(x_train[i:i + 128],) for i in range(0, 512, 128)]
    errors, accuracy = {}, {}
    for reconstruct in (False, True):
        model = copy.deepcopy(trained_mlp)
        result = prune(model, sparsity=0.7, criterion="activation", reconstruct=reconstruct,
                       calibration=calibration)
        assert all(row["reconstructed"] == reconstruct for row in result.report)
        assert result.info["sparsity"] == pytest.approx(0.7, abs=1e-3)  # the mask holds after the update
        errors[reconstruct] = layer_output_error(model, trained_mlp, 2, x_test)
        with torch.no_grad():
            accuracy[reconstruct] = float((model(x_test).argmax(1) == y_test).float().mean())
    assert errors[True] < 0.7 * errors[False], errors
    assert accuracy[True] >= accuracy[False] - 0.005, accuracy


def correlated_layer(rows: int = 24, cols: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, gram)``: a random layer and the Gram matrix of correlated, off-centre inputs."""
    torch.manual_seed(0)
    x = torch.randn(2000, cols) @ torch.randn(cols, cols) * 0.3 + torch.randn(cols)
    return torch.randn(rows, cols), x.T @ x


def test_exact_update_is_each_rows_least_squares_optimum():
    weight, gram = correlated_layer()
    swept, keep = sparsegpt(weight, gram, damp=0.1, count=torch.full((24,), 48))
    exact = exact_update(swept, weight, keep, gram, damp=0.1)
    damped = gram.double() + 0.1 * float(gram.diagonal().mean()) * torch.eye(96, dtype=torch.float64)
    for row in range(24):  # the optimum of each row's own system, solved directly
        kept = keep[row]
        direct = torch.linalg.solve(damped[kept][:, kept], (weight[row].double() @ damped)[kept])
        assert torch.allclose(exact[row, kept].double(), direct, rtol=1e-3, atol=1e-3)
    assert not exact[~keep].any()
    assert output_error(exact - weight, gram) < 0.8 * output_error(swept - weight, gram)


@pytest.mark.parametrize("how", ["per row", "per tensor", "2:4"])
def test_admm_prunes_the_asked_counts_and_every_forced_entry(how):
    weight, gram = correlated_layer()
    forced = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < 0.1
    asked = {"per row": {"count": torch.full((24,), 48)}, "per tensor": {"count": 24 * 48},
             "2:4": {"n_of_m": (2, 4)}}[how]
    new, keep = admm_prune(weight, gram, damp=0.1, forced=forced, **asked)
    swept, swept_keep = sparsegpt(weight, gram, damp=0.1, forced=forced, **asked)
    assert not new[~keep].any() and not keep[forced].any()
    if how == "per row":
        assert (keep.sum(1) == 48).all()
    elif how == "per tensor":
        assert int(keep.sum()) == 24 * 48
    else:
        assert (keep.reshape(24, -1, 4).sum(2) <= 2).all() and int(keep.sum()) == int(swept_keep.sum())
    assert output_error(new - weight, gram) < output_error(swept - weight, gram)


def test_exact_update_and_admm_selection_lower_the_held_out_error(trained_mlp, digits):
    """What ``update: exact`` and ``selection: admm`` were built for, on data the calibration never saw."""
    x_train, _, x_test, y_test = digits
    calibration = [(x_train[i:i + 128],) for i in range(0, 512, 128)]
    with torch.no_grad():
        dense = trained_mlp(x_test)
    errors, accuracy = {}, {}
    for name, options in {"sweep": {"update": "sweep"}, "exact": {}, "admm": {"selection": "admm"}}.items():
        model = copy.deepcopy(trained_mlp)
        result = prune(model, sparsity=0.8, criterion="activation", reconstruct=True, calibration=calibration,
                       **options)
        assert result.info["sparsity"] == pytest.approx(0.8, abs=0.01)
        assert {row["selection"] for row in result.report} == {"admm" if name == "admm" else "sweep"}
        with torch.no_grad():
            out = model(x_test)
        errors[name] = float((out - dense).pow(2).mean())
        accuracy[name] = float((out.argmax(1) == y_test).float().mean())
    assert errors["exact"] < 0.5 * errors["sweep"], errors
    assert errors["admm"] < 0.8 * errors["exact"], errors
    assert accuracy["exact"] > accuracy["sweep"] + 0.02, accuracy


def test_activation_criterion_through_the_engine_uses_calibration_batches(engine):
    task = tiny_task(train_steps=30)
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5, "criterion": "activation",
                                      "reconstruct": True, "calibration_batches": 2}}],
              "evaluate": ["accuracy"]}
    result = engine.run(task.model, recipe, **task.run_kwargs())
    rows = result.steps[0].report
    assert all(r["criterion"] == "activation" and r["reconstructed"] for r in rows)
    assert result.final["accuracy"] >= result.baseline["accuracy"] - 0.1


def test_sequential_reconstruct_tracks_the_pruned_inputs_of_later_layers(trained_mlp, digits):
    x_train, _, x_test, y_test = digits
    calibration = [(x_train[i:i + 128],) for i in range(0, 512, 128)]
    with torch.no_grad():
        dense = trained_mlp(x_test)
    errors, accuracy = {}, {}
    for sequential in (False, True):
        model = copy.deepcopy(trained_mlp)
        # the criterion's mask with the light ridge: where the order of calibration matters most
        prune(model, sparsity=0.7, criterion="activation", reconstruct=True, sequential=sequential,
              selection="score", update="sweep", damp=0.01, calibration=calibration)
        with torch.no_grad():
            out = model(x_test)
        errors[sequential] = float((out - dense).pow(2).mean())
        accuracy[sequential] = float((out.argmax(1) == y_test).float().mean())
    assert errors[True] < errors[False], errors
    assert accuracy[True] > accuracy[False] + 0.02, accuracy


class TinyAttention(nn.Module):
    """Self-attention with separate q/k/v projections, taking keyword inputs like a tokenizer's output."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / 4.0
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        h = h + self.o(scores.softmax(-1) @ self.v(h))
        h = h + self.ff(h)
        return (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)


def test_dict_batches_calibrate_a_transformer_like_model_through_the_engine(engine):
    torch.manual_seed(0)
    model = TinyAttention().eval()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (8, 12), generator=gen),
                "attention_mask": torch.ones(8, 12, dtype=torch.long)} for _ in range(4)]
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5, "scope": "row",
                                      "criterion": "activation", "reconstruct": True}}], "evaluate": []}
    result = engine.run(model, recipe, train_data=batches)
    rows = {r["layer"]: r for r in result.steps[0].report}
    assert set(rows) == {"q", "k", "v", "o", "ff.0", "ff.2"}
    assert all(r["criterion"] == "activation" and r["reconstructed"] for r in rows.values())
    pruned = result.model.eval()
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(pruned(**batches[0]), model(**batches[0])).mean()
    assert cosine > 0.9


def test_activation_without_any_data_is_a_clear_error():
    with pytest.raises(torchslim.DataError, match="calibration"):
        prune(DigitsCNN(width=4), sparsity=0.5, criterion="activation", calibration=[])


# ------------------------------------------------------------------------------------- gradual

def test_cubic_schedule_follows_zhu_and_gupta():
    steps = cubic_schedule(0.9, 4)
    assert steps[-1] == pytest.approx(0.9)
    assert steps == sorted(steps)
    assert steps[0] == pytest.approx(0.9 * (1 - 0.75 ** 3))
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps, reverse=True)  # prune fast first, slowly near the end


def test_gradual_rounds_fine_tune_between_and_reach_the_target(engine):
    task = tiny_task(train_steps=20)
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global", "rounds": 3,
                                      "between": {"method": "sgd", "steps": 2}}}],
              "evaluate": ["nonzeros"]}
    result = engine.run(task.model, recipe, **task.run_kwargs())
    info = result.steps[0].info
    assert info["schedule"] == pytest.approx(cubic_schedule(0.8, 3), abs=1e-6)
    assert info["sparsity"] == pytest.approx(0.8, abs=1e-3)
    # fine-tuning between rounds changed the kept weights of the final model
    one_shot = engine.run(task.model, {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.8,
                                                               "scope": "global"}}], "evaluate": []},
                          **task.run_kwargs())
    assert not torch.equal(result.model.fc1.weight, one_shot.model.fc1.weight)


# ----------------------------------------------------------------------------------- tied weights

class TiedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 8)
        self.down = nn.Linear(8, 8)
        self.down.weight = self.up.weight

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_tied_weights_are_pruned_once_with_one_mask():
    torch.manual_seed(0)
    model = TiedMLP()
    result = prune(model, sparsity=0.5)
    assert [r["layer"] for r in result.report] == ["up"]
    assert any(layer == "down.weight" and "up.weight" in why for layer, why in result.skipped)
    assert get_mask(model.up, "weight") is get_mask(model.down, "weight")
    assert torch.equal(model.up.weight, model.down.weight)
    assert sparsity(model.up.weight) == pytest.approx(0.5)


def test_tied_weight_outside_the_targets_is_skipped_with_the_reason(engine):
    torch.manual_seed(0)
    model = TiedMLP()
    x = torch.randn(16, 8)
    before = model.up.weight.detach().clone()
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5, "criterion": "activation",
                                      "targets": {"include": ["up"]}}}], "evaluate": []}
    with pytest.raises(torchslim.StepError, match=r"up\.weight: tied to down\.weight \(Linear\), which the step "
                                                  r"does not target"):
        engine.run(model, recipe, example_inputs=(x,))
    assert torch.equal(model.up.weight, before)


def test_tied_weight_with_every_holder_targeted_is_masked_consistently(engine):
    torch.manual_seed(0)
    model = TiedMLP()
    x = torch.randn(16, 8)
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5, "criterion": "activation",
                                      "targets": {"include": ["up", "down"]}}}],
              "evaluate": []}
    result = engine.run(model, recipe, example_inputs=(x,))
    pruned = result.model
    assert get_mask(pruned.down, "weight") is get_mask(pruned.up, "weight")
    assert torch.equal(pruned.up.weight, pruned.down.weight)
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.5)
    pruned(x).sum().backward()
    optimizer.step()
    assert torch.equal(pruned.up.weight, pruned.down.weight)
    assert sparsity(pruned.down.weight) >= 0.5


# ------------------------------------------------------------------------------------ edge cases

def test_sparsity_zero_changes_nothing():
    model = DigitsCNN(width=4)
    before = copy.deepcopy(model.state_dict())
    result = prune(model, sparsity=0.0)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.info["sparsity"] == 0


def test_threshold_that_empties_a_layer_is_rejected_and_leaves_the_model_alone(engine):
    task = tiny_task()
    model = task.model
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(torchslim.ModelError, match=r"zero every weight of .*fc2\.weight.*allow_empty_layers"):
        prune(model, threshold=1e6)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    prune(model, threshold=1e6, allow_empty_layers=True)
    assert all(not bool(getattr(mod, name).any()) for _, mod, name, _ in masked_parameters(model))


def test_high_sparsity_keeps_at_least_one_weight_per_tensor():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 400))
    result = prune(model, sparsity=0.99, scope="layer")
    assert all(row["kept"] >= 1 for row in result.report)


def test_non_finite_weights_are_rejected_naming_the_layer(engine):
    model = DigitsCNN(width=4)
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(torchslim.ModelError, match=r"conv2\.weight.*NaN or inf"):
        prune(model, sparsity=0.5)
    assert get_mask(model.fc1, "weight") is None
    with pytest.raises(torchslim.StepError, match=r"conv2\.weight"):
        engine.run(model, {"steps": [{"compress": {"method": "magnitude"}}], "evaluate": []},
                   example_inputs=(torch.randn(2, 1, 8, 8),))


def test_targets_that_match_no_weight_are_an_error():
    with pytest.raises(torchslim.ModelError, match="targets"):
        prune(nn.Sequential(nn.ReLU()), sparsity=0.5)


def test_default_types_are_the_weight_layers_attention_and_gpt2_projections():
    assert set(MagnitudePruning.default_types) == {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNN, nn.LSTM, nn.GRU,
                                                   nn.MultiheadAttention, HFConv1D}


# ----------------------------------------------------------------------------------------- bench

def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "pruning.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pruning.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert {"digits", "speed", "size"} <= set(data)
    assert data["speed"]["rows"] and data["size"]["rows"]


def test_bench_mnist1d_gradual_beats_one_shot_when_one_shot_does_not_recover(tmp_path):
    """MNIST-1D, generated locally by the mnist1d package: at 90% a narrow net pruned in one shot does
    not recover in 5 epochs, and the same budget spent over 4 gradual rounds keeps far more."""
    pytest.importorskip("mnist1d")
    out = tmp_path / "pruning.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pruning.py"), "--quick", "--mnist1d", "--json", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads(out.read_text())["mnist1d"]["runs"]
    accuracy = {r["method"]: r["accuracy"] for r in runs}
    assert accuracy["one-shot, no fine-tuning"] < accuracy["torchslim one-shot + finetune"]
    assert accuracy["torchslim gradual (4 rounds)"] > accuracy["torchslim one-shot + finetune"] + 0.05


def test_sensitivity_allocation_moves_the_output_less_than_uniform_at_the_same_sparsity():
    from torchslim.demo.run import trained_digits_model

    model, train, test = trained_digits_model(seed=0, epochs=2)
    inputs = [batch[0] for batch in test]  # held-out digits: the allocation is measured on train batches
    with torch.no_grad():
        reference = torch.cat([model(x) for x in inputs])
    errors = {}
    for allocation in ("uniform", "sensitivity"):
        step = {"method": "magnitude", "sparsity": 0.6, "criterion": "activation", "scope": "layer",
                "allocation": allocation}
        result = torchslim.Engine().run(model, {"steps": [{"compress": step}], "evaluate": []}, train_data=train)
        assert abs(result.steps[0].info["sparsity"] - 0.6) < 0.005
        with torch.no_grad():
            got = torch.cat([result.model(x) for x in inputs])
        errors[allocation] = float((got - reference).norm() / reference.norm())
    assert errors["sensitivity"] < 0.75 * errors["uniform"]
