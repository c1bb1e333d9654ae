"""int8 for GRU/LSTM/RNN layers, and pruning + int8 stored sparse: real models, saved and loaded through torchslim."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchslim_quantize import Int8GRU, Int8LSTM, Int8RNN, quantize, recurrent_kernel

import torchslim
from torchslim.io import saved_size_bytes
from torchslim.measure import count_macs, count_nonzeros

BENCH = Path(__file__).resolve().parents[3] / "bench" / "quantize_rnn.py"
needs_kernel = pytest.mark.skipif(not recurrent_kernel(), reason="no dynamic int8 RNN kernel in this torch build")


class ConvGRU(nn.Module):
    """Conv1d front end, 2-layer GRU, Linear head per frame (the issue's Conv+GRU model)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv1d(20, 64, 5, padding=2)
        self.conv2 = nn.Conv1d(64, 64, 3, padding=1)
        self.gru = nn.GRU(64, 128, num_layers=2, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.gru(h.transpose(1, 2))[0])


class Recurrents(nn.Module):
    """One of each recurrent type, in sequence."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(8, 16, batch_first=True, bidirectional=True)
        self.lstm = nn.LSTM(32, 16, batch_first=True)
        self.rnn = nn.RNN(16, 16, batch_first=True, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.lstm(self.gru(x)[0])[0])[0]


def run(engine, model, steps, x):
    return engine.run(model, {"steps": steps, "evaluate": []}, example_inputs=(x,))


@needs_kernel
@pytest.mark.parametrize("float_class, kind", [(nn.GRU, Int8GRU), (nn.LSTM, Int8LSTM)])
def test_dynamic_kernel_runs_close_to_float_for_every_input_form(float_class, kind):
    torch.manual_seed(0)
    layer = float_class(12, 24, num_layers=2, bidirectional=True).eval()
    quantized = kind.from_float(layer, kernel="dynamic").eval()
    x, h0 = torch.randn(7, 3, 12), torch.randn(4, 3, 24)
    state = (h0, torch.randn(4, 3, 24)) if float_class is nn.LSTM else h0
    first = tuple(h[:, 0] for h in state) if float_class is nn.LSTM else h0[:, 0]
    packed = nn.utils.rnn.pack_padded_sequence(x, [7, 2, 5], enforce_sorted=False)
    with torch.no_grad():
        for args in ((x,), (x, state), (x[:, 0],), (x[:, 0], first), (packed, state)):
            (ref, ref_h), (out, out_h) = layer(*args), quantized(*args)
            if isinstance(ref, nn.utils.rnn.PackedSequence):
                assert torch.equal(out.batch_sizes, ref.batch_sizes)
                ref, out = ref.data, out.data
            ref_h, out_h = torch.stack(list(ref_h)) if isinstance(ref_h, tuple) else ref_h, \
                torch.stack(list(out_h)) if isinstance(out_h, tuple) else out_h
            assert out.shape == ref.shape and out_h.shape == ref_h.shape
            assert (out - ref).abs().max() < 0.05 and (out_h - ref_h).abs().max() < 0.05
    assert quantized._cells is not None and len(quantized._cells) == 4  # one packed cell per layer and direction


@needs_kernel
def test_training_uses_dequantized_weights_and_a_changed_weight_is_repacked():
    layer = Int8GRU.from_float(nn.GRU(6, 8, batch_first=True))
    x = torch.randn(2, 5, 6, requires_grad=True)
    layer.train()
    layer(x)[0].sum().backward()
    assert x.grad is not None and layer.bias_hh_l0.grad is not None and layer.weight_hh_l0.grad is None
    layer.eval()
    with torch.no_grad():
        before = layer(x)[0]
        layer.weight_ih_l0.zero_()
        layer.weight_hh_l0.zero_()
        after = layer(x)[0]
    assert not torch.allclose(before, after)
    expected = Int8GRU.from_float(nn.GRU(6, 8, batch_first=True), kernel="weight-only").eval()
    expected.load_state_dict(layer.state_dict())
    with torch.no_grad():  # zero weights: the output depends on the biases only, on both paths
        assert torch.allclose(after, expected(x)[0], atol=0.02)


def test_each_recurrent_type_gets_its_fast_form_and_the_report_says_why(torchslim_engine):
    x = torch.randn(2, 6, 8)
    model = Recurrents().eval()
    result = run(torchslim_engine, model, [{"compress": {"method": "int8"}}], x)
    rows = {row["layer"]: row for row in result.steps[0].report}
    assert isinstance(result.model.gru, Int8GRU) and isinstance(result.model.lstm, Int8LSTM)
    assert isinstance(result.model.rnn, Int8RNN) and result.model.rnn.rnn.nonlinearity == "relu"
    assert {name: row["int8"] for name, row in rows.items()} == {
        "gru": "dynamic", "lstm": "weight-only", "rnn": "weight-only"}
    assert "LSTM kernel measured" in rows["lstm"]["compute"] and "no int8 kernel" in rows["rnn"]["compute"]
    if recurrent_kernel():
        assert "dynamic int8 GRU kernel" in rows["gru"]["compute"]
    with torch.no_grad():
        assert (result.model.eval()(x) - model(x)).abs().max() < 0.05
    assert count_macs(result.model, (x,)) == count_macs(model, (x,))  # the kernels' MACs are still counted


@needs_kernel
def test_options_pick_the_kernel_per_type_and_it_survives_save_and_load(torchslim_engine, tmp_path):
    x = torch.randn(2, 6, 8)
    step = {"compress": {"method": "int8", "gru": "weight-only", "lstm": "dynamic", "rnn": "skip"}}
    result = run(torchslim_engine, Recurrents(), [step], x)
    model = result.model.eval()
    assert model.gru.kernel == "weight-only" and model.lstm.kernel == "dynamic" and type(model.rnn) is nn.RNN
    assert dict(result.steps[0].skipped)["rnn"] == "rnn: skip"
    torchslim.save(result, tmp_path / "m")
    loaded = torchslim.load(tmp_path / "m", base_model=Recurrents()).eval()
    assert loaded.gru.kernel == "weight-only" and loaded.lstm.kernel == "dynamic"
    assert loaded.lstm.weight_hh_l0.dtype == torch.int8
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_pruned_then_int8_conv_gru_is_stored_sparse_under_a_fifth_of_the_dense_file(torchslim_engine, tmp_path):
    x = torch.randn(2, 20, 30)
    dense = ConvGRU().eval()
    steps = [{"compress": {"method": "magnitude", "sparsity": 0.5}}, {"compress": {"method": "int8"}}]
    result = run(torchslim_engine, ConvGRU(), steps, x)
    quantized = result.model.eval()
    ratio = saved_size_bytes(quantized) / saved_size_bytes(dense)
    assert ratio <= 0.2, f"pruned 50% + int8 saved at {ratio:.3f}x of the dense float file"
    torchslim.save(result, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    weights = {k: v for k, v in manifest["tensors"].items() if ".weight" in k and not k.endswith("_scale")}
    assert len(weights) == 7 and all(v["dtype"] == "int8" and v["encoding"] == "bitmask" for v in weights.values())
    loaded = torchslim.load(tmp_path / "m", base_model=ConvGRU()).eval()
    assert isinstance(loaded.gru, Int8GRU) and count_nonzeros(loaded) == count_nonzeros(quantized)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


def test_pruned_zeros_stay_exactly_zero_in_the_int8_gru(torchslim_engine):
    steps = [{"compress": {"method": "magnitude", "sparsity": 0.5}}, {"compress": {"method": "int8"}}]
    x = torch.randn(2, 20, 30)
    pruned = run(torchslim_engine, ConvGRU(), steps[:1], x).model
    zeros = (pruned.gru.weight_hh_l1 == 0)
    quantized = quantize(pruned).model
    assert torch.equal(quantized.gru.weight_hh_l1 == 0, zeros)
    assert 0.45 < float(zeros.float().mean()) < 0.55


def test_bad_choices_fail_before_any_work_naming_the_fix(torchslim_engine):
    x = torch.randn(2, 6, 8)
    model = Recurrents()
    with pytest.raises(torchslim.RecipeError, match="rnn"):
        run(torchslim_engine, model, [{"compress": {"method": "int8", "rnn": "dynamic"}}], x)
    with pytest.raises(ValueError, match="no dynamic int8 kernel for nn.RNN; use 'weight-only'"):
        Int8RNN.from_float(nn.RNN(4, 4), kernel="dynamic")
    with pytest.raises(ValueError, match="proj_size=2; use 'weight-only'"):
        Int8LSTM.from_float(nn.LSTM(4, 4, proj_size=2), kernel="dynamic")
    projected = nn.Sequential(nn.LSTM(4, 8, proj_size=2))
    with pytest.raises(torchslim.ModelError, match="lstm: dynamic does not run an LSTM with proj_size"):
        quantize(projected, {"lstm": "dynamic"})
    with pytest.raises(RuntimeError, match="input_size"):
        Int8GRU.from_float(nn.GRU(4, 4)).eval()(torch.randn(3, 2, 5))


@needs_kernel
def test_copies_of_a_used_layer_rebuild_their_kernel_cache():
    layer = Int8GRU.from_float(nn.GRU(6, 8, batch_first=True)).eval()
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        out = layer(x)[0]
        twin = copy.deepcopy(layer)
        assert twin._cells is None
        assert torch.equal(twin(x)[0], out)


def test_lstm_saved_before_kernels_existed_loads_as_weight_only():
    spec = {"input_size": 4, "hidden_size": 8, "num_layers": 1, "bias": True, "batch_first": False,
            "dropout": 0.0, "bidirectional": False, "proj_size": 0}
    layer = Int8LSTM.from_torchslim_spec(spec)
    assert layer.kernel == "weight-only" and layer.torchslim_spec() == {**spec, "kernel": "weight-only",
                                                                        "reduce_range": True}


@pytest.mark.skipif(not BENCH.is_file(), reason="the torchslim source tree (bench/) is not here")
def test_bench_quick_runs_and_meets_the_size_floor(tmp_path):
    out = tmp_path / "quantize_rnn.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["floor"]["met"] and results["floor"]["pruned_int8_size_ratio"] <= 0.2
    rows = {(r["model"], r["variant"]): r for r in results["rows"] if r["part"] == "model"}
    assert all(r["load_equal"] for r in rows.values())
    assert rows[("Conv+GRU", "int8")]["rel_err"] < 0.05
