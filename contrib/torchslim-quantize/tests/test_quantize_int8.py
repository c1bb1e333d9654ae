"""torchslim-quantize, tested as its users run it: installed with pip, found through its entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torchslim_quantize import Int8Conv, Int8Linear, Int8LSTM, dynamic_kernel, quantize

import torchslim
from torchslim.io import saved_size_bytes
from torchslim.masks import masked_parameters
from torchslim.measure import count_macs, count_nonzeros
from torchslim.plugins.svd.modules import LowRankLinear
from torchslim.testing import check_method_plugin

BENCH = Path(__file__).resolve().parents[3] / "bench" / "quantize.py"
INT8_ONLY = {"steps": [{"compress": {"method": "int8"}}], "evaluate": []}


class Tagger(nn.Module):
    """A small sequence model: LSTM then a Linear head on every step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def test_int8_honours_the_plugin_contract(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    info = torchslim_engine.registry.infos["int8"]
    assert info.distribution == "torchslim-quantize" and info.stages == ("compress",)
    result = check_method_plugin(
        torchslim_engine, "int8", task.model, task.example_inputs,
        good_options={"linear": "dynamic"}, bad_options={"linear": "int4", "conv": "dynamic", "min_weights": -1},
        failing={"model": nn.Sequential(nn.ReLU())})
    assert {row["layer"]: row["int8"] for row in result.report} == {
        "conv1": "weight-only", "conv2": "weight-only", "conv3": "weight-only", "fc1": "dynamic", "fc2": "dynamic"}


def test_linear_weights_are_stored_as_int8_and_about_4x_smaller_on_disk(torchslim_engine, tmp_path):
    model = mlp()
    result = torchslim_engine.run(model, INT8_ONLY, example_inputs=(torch.randn(4, 256),))
    assert saved_size_bytes(model) / saved_size_bytes(result.model) > 3.8
    assert result.steps[0].info["compression"] > 3.9  # weight bytes only (scales included)
    torchslim.save(result, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    assert dtypes["0.weight"] == "I8" and dtypes["0.scale"] == "F32" and dtypes["0.bias"] == "F32"


def test_quantized_outputs_stay_close_and_macs_are_still_counted():
    model = mlp().eval()
    quantized = quantize(mlp().eval()).model
    x = torch.randn(64, 256)
    with torch.no_grad():
        ref, out = model(x), quantized(x)
    assert torch.nn.functional.cosine_similarity(ref, out).min() > 0.999
    assert count_macs(quantized, (x,)) == count_macs(model, (x,))  # int8 MACs are MACs


@pytest.mark.skipif(dynamic_kernel() is None, reason="no int8 dynamic kernel in this torch build")
def test_dynamic_kernel_runs_in_inference_and_gradients_flow_in_training():
    layer = Int8Linear.from_float(nn.Linear(32, 8)).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        fast = layer(x)
    assert layer._packed is not None  # the int8 x int8 kernel ran
    slow = torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
    assert torch.allclose(fast, slow, atol=0.05)
    layer.train()
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None and layer.weight.grad is None
    with torch.no_grad():  # a changed weight is repacked, never served stale
        layer.weight.zero_()
        assert torch.allclose(layer.eval()(x), layer.bias.expand(4, 8))


def test_quantized_model_saves_and_loads_through_torchslim(torchslim_engine, torchslim_tiny_task, tmp_path):
    task = torchslim_tiny_task
    result = torchslim_engine.run(task.model, INT8_ONLY, example_inputs=task.example_inputs)
    torchslim.save(result, tmp_path / "m")
    loaded = torchslim.load(tmp_path / "m", base_model=task.build())
    assert isinstance(loaded.fc1, Int8Linear) and isinstance(loaded.conv1, Int8Conv)
    assert loaded.fc1.weight.dtype == torch.int8 and loaded.conv2.weight.dtype == torch.int8
    x = task.example_inputs[0]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), result.model.eval()(x))


def test_lstm_is_quantized_weight_only_and_round_trips(torchslim_engine, tmp_path):
    model = Tagger().eval()
    x = torch.randn(3, 7, 16)
    result = torchslim_engine.run(model, INT8_ONLY, example_inputs=(x,))
    quantized = result.model.eval()
    assert isinstance(quantized.lstm, Int8LSTM) and quantized.lstm.weight_hh_l1_reverse.dtype == torch.int8
    with torch.no_grad():
        assert (quantized(x) - model(x)).abs().max() < 0.02
    assert count_macs(quantized, (x,)) == count_macs(model, (x,))
    torchslim.save(result, tmp_path / "m")
    loaded = torchslim.load(tmp_path / "m", base_model=Tagger()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    # float32 biases and per-row scales weigh in at hidden size 32; the weight matrices shrink 4x
    assert saved_size_bytes(model) / saved_size_bytes(quantized) > 2.9


def test_prune_finetune_then_int8_in_one_recipe(torchslim_engine, torchslim_tiny_task, tmp_path):
    task = torchslim_tiny_task
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}},
                        {"finetune": {"method": "sgd", "epochs": 2}},
                        {"compress": {"method": "int8"}}],
              "evaluate": ["accuracy", "nonzeros", "size"]}
    result = torchslim_engine.run(task.model, recipe, **task.run_kwargs())
    pruned, tuned, quantized = (record.metrics for record in result.steps)
    assert quantized["nonzeros"] == tuned["nonzeros"]  # pruned zeros stay exactly zero in int8
    assert quantized["accuracy"] >= tuned["accuracy"] - 0.03
    assert quantized["size_bytes"] < 0.6 * tuned["size_bytes"]
    assert not masked_parameters(result.model)  # masks were baked into the int8 weights
    torchslim.save(result, tmp_path / "m")
    loaded = torchslim.load(tmp_path / "m", base_model=task.build())
    assert count_nonzeros(loaded) == quantized["nonzeros"]


def test_layers_that_torch_or_other_kinds_read_directly_are_left_alone_and_listed():
    torch.manual_seed(0)
    attention = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(LowRankLinear(16, 16, rank=4), attention, nn.Linear(16, 4)).eval()
    x = torch.randn(2, 5, 16)
    result = quantize(model)
    skipped = dict(result.skipped)
    assert {"0.first", "0.second", "1.self_attn.out_proj", "1.linear1", "1.linear2"} <= set(skipped)
    assert "LowRankLinear" in skipped["0.first"] and "TransformerEncoderLayer" in skipped["1.linear1"]
    assert type(model[0].first) is nn.Linear and type(model[1].linear1) is nn.Linear
    assert isinstance(model[2], Int8Linear)
    with torch.no_grad():
        assert model(x).shape == (2, 5, 4)


def test_bad_weights_raise_a_model_error_naming_the_layer_and_change_nothing():
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(torchslim.ModelError, match="layer '2' has NaN"):
        quantize(model)
    assert all(type(m) is nn.Linear for m in model if not isinstance(m, nn.ReLU))


def test_eight_bit_activations_are_an_option_that_survives_save_and_load(torchslim_engine, tmp_path):
    recipe = {"steps": [{"compress": {"method": "int8", "reduce_range": False}}], "evaluate": []}
    result = torchslim_engine.run(mlp(), recipe, example_inputs=(torch.randn(4, 256),))
    assert result.model[0].reduce_range is False
    torchslim.save(result, tmp_path / "m")
    assert torchslim.load(tmp_path / "m", base_model=mlp())[0].reduce_range is False


@pytest.mark.skipif(not BENCH.is_file(), reason="the torchslim source tree (bench/) is not here")
def test_bench_quick_runs(tmp_path):
    out = tmp_path / "quantize.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["int8 (dynamic Linear)"]["linear_ratio"] > 3.8 and rows["int8 weight-only"]["cos_min"] > 0.99
