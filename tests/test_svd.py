"""The ``svd`` accelerate method: rank rules, MAC budgets, data-aware factors, latency checks, engine path."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import torchslim
from torchslim.demo import digits_loaders
from torchslim.plugins.svd.macs import factor_macs
from torchslim.plugins.svd.ranks import RankCurve, allocate_ranks
from torchslim.plugins.svd.spectra import compute_spectrum, weight_matrix
from torchslim.plugins.svd.modules import MODULE_KINDS, ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d
from torchslim.measure import count_macs
from torchslim.plugins.svd import SVDDecomposition, decompose
from torchslim.plugins.svd.timing import raised_floor
from torchslim.zoo import DigitsCNN
from helpers import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
FAST = {"measure_latency": False}


@pytest.fixture(scope="session")
def digits():
    return digits_loaders(batch_size=64, seed=0)


@pytest.fixture(scope="session")
def trained_digits_cnn(digits):
    """A small DigitsCNN trained for two epochs on the real digits data (~97% test accuracy)."""
    train, _ = digits
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _run(model: nn.Module, x: torch.Tensor, calibration=(), **options):
    model = copy.deepcopy(model)
    result = decompose(model, (x,), {**FAST, **options}, calibration=calibration)
    return model, result


def test_trained_fixture_is_really_trained(trained_digits_cnn, digits):
    assert _accuracy(trained_digits_cnn, digits[1]) > 0.85


# ---------------------------------------------------------------------------- options
def test_options_take_one_rank_rule_and_validate_ranges():
    Options = SVDDecomposition.Options
    assert Options().rank_rule == "rank_ratio"
    assert Options(mac_ratio=0.5).rank_rule == "mac_ratio"
    with pytest.raises(ValidationError, match="not rank_ratio and mac_ratio"):
        Options(rank_ratio=0.3, mac_ratio=0.5)
    for bad in ({"mac_ratio": 1.5}, {"rank": 0}, {"energy": 0}, {"factorization": "tucker"}, {"ranks": 3}):
        with pytest.raises(ValidationError):
            Options(**bad)
    strength = [n for n, f in Options.model_fields.items() if (f.json_schema_extra or {}).get("strength")]
    assert strength == ["rank_ratio"]
    assert all(f.description for f in Options.model_fields.values())


def test_bad_options_in_a_recipe_name_the_step():
    with pytest.raises(torchslim.RecipeError, match=r"step 1 \(accelerate/svd\).*mac_ratio"):
        torchslim.Engine().recipe({"steps": [{"accelerate": {"method": "svd", "mac_ratio": 2}}], "evaluate": []})


def test_no_example_inputs_is_a_clear_error():
    with pytest.raises(torchslim.ModelError, match="example inputs"):
        decompose(DigitsCNN(width=4), (), FAST)


# ---------------------------------------------------------------------------- rank rules
def test_fixed_rank_factorizes_every_layer_and_reports_it(trained_digits_cnn):
    model, result = _run(trained_digits_cnn, _x(), rank=3)
    assert isinstance(model.conv2, ChannelLowRankConv) and isinstance(model.fc1, LowRankLinear)
    rows = {row["layer"]: row for row in result.report}
    assert set(rows) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert {row["rank"] for row in rows.values()} == {3}
    assert rows["conv2"]["shape_before"] == "16x8x3x3" and rows["conv2"]["shape_after"] == "3x8x3x3 + 16x3x1x1"
    keys = ["layer", "factorization", "shape_before", "shape_after", "rank", "macs_before", "macs_after",
            "rel_output_error", "latency_before_ms", "latency_after_ms", "warning"]
    assert all(list(row) == keys for row in result.report)
    assert all(0 < row["rel_output_error"] < 1 and row["macs_after"] < row["macs_before"] for row in rows.values())
    assert result.info["macs_after"] == count_macs(model, (_x(),))


def test_rank_ratio_energy_and_rank_multiple(trained_digits_cnn):
    _, half = _run(trained_digits_cnn, _x(), rank_ratio=0.5)
    ranks = {row["layer"]: row["rank"] for row in half.report}
    assert ranks["conv3"] == 8 and ranks["fc1"] == 64 and ranks["fc2"] == 5

    _, energy = _run(trained_digits_cnn, _x(), energy=0.9)
    _, energy_hi = _run(trained_digits_cnn, _x(), energy=0.99)
    low = {row["layer"]: row for row in energy.report}
    high = {row["layer"]: row for row in energy_hi.report}
    assert all(high[name]["rank"] >= low[name]["rank"] for name in low if name in high)
    assert all(low[name]["rel_output_error"] < 0.5 for name in low)

    _, rounded = _run(trained_digits_cnn, _x(), rank_ratio=0.3, rank_multiple=8)
    for row in rounded.report:
        full = int(row["shape_before"].split("x")[0])
        assert row["rank"] % 8 == 0 or row["rank"] == full


def test_layers_whose_factors_save_no_macs_are_skipped_and_reported(trained_digits_cnn):
    model, result = _run(trained_digits_cnn, _x(), rank_ratio=1.0)
    assert result.report == []
    assert {name for name, _ in result.skipped} == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert all("no reduction" in reason for _, reason in result.skipped)
    assert not any(isinstance(m, tuple(MODULE_KINDS)) for m in model.modules())


def test_depthwise_skipped_grouped_decomposed_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, padding=1, groups=2))
    x = torch.randn(2, 8, 6, 6)
    decomposed, result = _run(model, x, rank=2)
    reasons = dict(result.skipped)
    assert "depthwise" in reasons["0"]
    assert isinstance(decomposed[1], ChannelLowRankConv) and decomposed[1].groups == 2
    assert decomposed[1].first.out_channels == 4  # rank 2 in each of the 2 groups


def test_spatial_and_auto_factorizations(trained_digits_cnn):
    model, result = _run(trained_digits_cnn, _x(), factorization="spatial", rank=4)
    assert isinstance(model.conv2, SpatialLowRankConv2d) and isinstance(model.fc1, LowRankLinear)
    assert model.conv2.first.kernel_size == (3, 1) and model.conv2.second.kernel_size == (1, 3)

    _, result = _run(trained_digits_cnn, _x(), factorization="auto", rank=4)
    convs = [row for row in result.report if row["layer"].startswith("conv")]
    assert convs
    for row in convs:  # auto picks, per layer, the kind with fewer MACs at the rank
        layer = getattr(trained_digits_cnn, row["layer"])
        shapes = (4, layer.in_channels, 8, 8), (4, layer.out_channels, 8, 8)
        options = []
        for kind in ("weight", "spatial"):
            full = compute_spectrum(weight_matrix(layer, kind), kind).full_rank
            options.append(factor_macs(layer, kind, min(4, full), *shapes))
        assert row["macs_after"] == min(options)


# ---------------------------------------------------------------------------- MAC budgets
@pytest.mark.parametrize("ratio", [0.7, 0.4])
def test_mac_ratio_of_the_whole_model_is_met(trained_digits_cnn, ratio):
    x = _x()
    before = count_macs(trained_digits_cnn, (x,))
    model, result = _run(trained_digits_cnn, x, mac_ratio=ratio)
    after = count_macs(model, (x,))
    assert after <= ratio * before + 1e-3 * before
    assert after >= 0.8 * ratio * before  # the largest cut allowed, not much more
    assert result.info["macs_after"] == after and "warning" not in result.info


def test_mac_ratio_of_the_targets_only(trained_digits_cnn):
    x = _x()
    model = copy.deepcopy(trained_digits_cnn)
    result = decompose(model, (x,), {**FAST, "mac_ratio": 0.5, "mac_scope": "targets"},
                                          targets=torchslim.Targets(include=["conv3", "fc1"]))
    targeted = 2 * result.info["target_macs"]  # the targeted layers' MACs before
    saved = count_macs(trained_digits_cnn, (x,)) - count_macs(model, (x,))
    assert 0.5 * targeted <= saved <= 0.7 * targeted
    assert {row["layer"] for row in result.report} <= {"conv3", "fc1"}
    assert type(model.conv2) is nn.Conv2d and type(model.fc2) is nn.Linear


def test_mac_ratio_prefers_layers_that_lose_least():
    """A layer with a nearly low-rank weight is cut before one with a flat spectrum."""
    torch.manual_seed(0)
    easy, hard = nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        easy.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64) + 0.01 * torch.randn(64, 64))
        hard.weight.copy_(torch.linalg.qr(torch.randn(64, 64))[0])
    model = nn.Sequential(easy, hard)
    decomposed, result = _run(model, torch.randn(16, 64), mac_ratio=0.75)
    rows = {row["layer"]: row for row in result.report}
    assert isinstance(decomposed[0], LowRankLinear) and type(decomposed[1]) is nn.Linear
    assert rows["0"]["rank"] == 16  # 16 * (64 + 64) MACs per row: exactly the budget, the largest rank allowed
    assert rows["0"]["rel_output_error"] < 0.01


# ---------------------------------------------------------------------------- data-aware
def test_data_aware_output_error_is_lower_than_plain_at_equal_rank(trained_digits_cnn, digits):
    train, test = digits
    x = next(iter(test))[0][:64]
    calibration = [batch for batch, _ in list(train)[:8]]
    _, plain = _run(trained_digits_cnn, x, rank=3)
    _, aware = _run(trained_digits_cnn, x, calibration=calibration, rank=3, data_aware=True)
    plain_err = {row["layer"]: row["rel_output_error"] for row in plain.report}
    aware_err = {row["layer"]: row["rel_output_error"] for row in aware.report}
    assert set(plain_err) == set(aware_err)
    for name in ("conv2", "conv3", "fc1"):
        assert aware_err[name] < plain_err[name], (name, aware_err[name], plain_err[name])
    assert sum(aware_err.values()) < 0.8 * sum(plain_err.values())


def test_data_aware_keeps_more_accuracy_at_a_mac_budget(trained_digits_cnn, digits):
    train, test = digits
    calibration = [batch for batch, _ in list(train)[:8]]
    x = calibration[0]
    plain, _ = _run(trained_digits_cnn, x, mac_ratio=0.4)
    aware, _ = _run(trained_digits_cnn, x, calibration=calibration, mac_ratio=0.4, data_aware=True)
    assert _accuracy(aware, test) > _accuracy(plain, test)


def test_sensitivity_weighted_budget_is_met_and_changes_the_ranks(trained_digits_cnn, digits):
    calibration = [batch for batch, _ in list(digits[0])[:4]]
    x = calibration[0]
    before = count_macs(trained_digits_cnn, (x,))
    _, by_energy = _run(trained_digits_cnn, x, calibration=calibration, mac_ratio=0.5, data_aware=True)
    model, by_sensitivity = _run(trained_digits_cnn, x, calibration=calibration, mac_ratio=0.5, data_aware=True,
                                 sensitivity=True)
    assert count_macs(model, (x,)) <= 0.5 * before * 1.001
    ranks = lambda result: {row["layer"]: row["rank"] for row in result.report}
    assert ranks(by_sensitivity) != ranks(by_energy)


def test_data_aware_without_calibration_data_is_an_error(trained_digits_cnn):
    with pytest.raises(torchslim.ModelError, match="calibration"):
        _run(trained_digits_cnn, _x(), calibration=[], rank=2, data_aware=True)


# ---------------------------------------------------------------------------- latency
def test_measured_latency_is_reported_and_slow_factors_are_kept_original(trained_digits_cnn):
    model, result = _run(trained_digits_cnn, _x(8), rank=2, measure_latency=True, min_speedup=50.0,
                         latency_runs=3)
    assert result.report and all(row["latency_before_ms"] > 0 for row in result.report)
    assert all(row["warning"].startswith("kept original") and row["rank"] is None for row in result.report)
    assert not any(isinstance(m, tuple(MODULE_KINDS)) for m in model.modules())
    assert result.info["layers_kept_slower"] == len(result.report)
    assert "factorized_speedup" not in result.info   # nothing factorized, no speed to summarize

    _, kept = _run(trained_digits_cnn, _x(8), rank=2, measure_latency=True, min_speedup=0.0, min_realized=0.0,
                   latency_runs=3)
    for row in kept.report:
        assert row["latency_after_ms"] > 0 and row["rank"] == 2
        slower = row["latency_after_ms"] > row["latency_before_ms"]
        assert row["warning"].startswith("slower") == slower
    # the step sums up what the factorized layers realized, so a user sees a MAC cut that bought no speed
    before = sum(row["latency_before_ms"] for row in kept.report)
    after = sum(row["latency_after_ms"] for row in kept.report)
    cut = sum(row["macs_before"] for row in kept.report) / sum(row["macs_after"] for row in kept.report)
    assert kept.info["factorized_speedup"] == pytest.approx(before / after)
    assert kept.info["factorized_realized"] == pytest.approx(before / after / cut)


def test_allocation_never_cuts_below_a_layers_rank_floor():
    torch.manual_seed(0)
    energies = torch.linspace(10, 1, 32)
    free = RankCurve(macs=32_000, cost_per_rank=1_000, energies=energies)
    floored = RankCurve(macs=32_000, cost_per_rank=1_000, energies=energies, min_rank=24)
    unconstrained = allocate_ranks([free, free], 30_000)
    constrained = allocate_ranks([free, floored], 30_000)
    assert unconstrained[1] is not None and unconstrained[1] < 24
    assert constrained[1] is None or constrained[1] >= 24
    assert constrained[0] < unconstrained[0]   # the budget moved to the layer without a floor


def test_a_layer_too_slow_at_a_deep_cut_is_cut_less_not_dropped():
    layer = SimpleNamespace(macs=100_000, rank=8, form="weight", cost_per_rank=lambda form: 1_000)
    assert raised_floor(layer, 8) == 56            # halfway to break-even (rank 99), rounded up to 8
    layer.rank = 96
    assert raised_floor(layer, 8) is None          # nothing useful is left: keep the original


def test_latency_spread_cuts_where_fewer_macs_save_time():
    """Two layers alike in MACs and spectrum: by MACs the budget is split evenly; by measured time it
    goes to the layer whose factors' time falls with the rank, not to one with a large fixed cost."""
    energies = torch.linspace(10, 1, 32)
    scales = RankCurve(macs=32_000, cost_per_rank=1_000, energies=energies, time=(1.0, 0.05, 0.03))
    overhead = RankCurve(macs=32_000, cost_per_rank=1_000, energies=energies, time=(1.0, 0.8, 0.006))
    by_macs = allocate_ranks([RankCurve(32_000, 1_000, energies)] * 2, 24_000)
    by_time = allocate_ranks([scales, overhead], 24_000)
    assert by_macs[0] == by_macs[1]
    assert by_time[1] is None or by_time[1] > by_time[0]
    assert sum(32_000 - 1_000 * r for r in by_time if r is not None) >= 24_000   # the MAC budget still holds
    # a rank whose factors would be slower than the original is never chosen
    slower = RankCurve(macs=32_000, cost_per_rank=1_000, energies=energies, time=(1.0, 1.2, 0.01))
    assert allocate_ranks([slower, scales], 10_000)[0] is None


def test_latency_spread_meets_the_mac_budget_on_a_real_model():
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(128, 128, 3, padding=1)).eval()
    x = torch.randn(2, 64, 32, 32)
    before = count_macs(convs, (x,))
    model, result = _run(convs, x, mac_ratio=0.5, measure_latency=True, spread_by="latency", latency_runs=3)
    assert count_macs(model, (x,)) <= 0.5 * before * 1.001 and "warning" not in result.info
    assert result.info["spread_by"] == "latency"
    assert all(row["latency_before_ms"] > 0 for row in result.report)
    with pytest.raises(ValidationError, match="spread_by='latency'.*mac_ratio"):
        SVDDecomposition.Options(rank_ratio=0.5, spread_by="latency")
    with pytest.raises(ValidationError, match="measure_latency"):
        SVDDecomposition.Options(mac_ratio=0.5, measure_latency=False, spread_by="latency")


# ---------------------------------------------------------------------------- engine
def test_engine_runs_svd_from_a_recipe_and_leaves_the_model_alone(trained_digits_cnn, digits):
    train, test = digits
    original = copy.deepcopy(trained_digits_cnn.state_dict())
    recipe = {
        "steps": [{"accelerate": {"method": "svd", "mac_ratio": 0.5, "data_aware": True, "calibration_batches": 4,
                                  "measure_latency": False, "targets": {"exclude": ["fc2"]}}}],
        "evaluate": ["macs"],
    }
    result = torchslim.Engine().run(trained_digits_cnn, recipe, train_data=train, eval_data=test)
    assert all(torch.equal(v, trained_digits_cnn.state_dict()[k]) for k, v in original.items())
    record = result.steps[0]
    assert result.final["macs"] <= 0.5 * result.baseline["macs"] * 1.001
    assert {row["layer"] for row in record.report} and "fc2" not in {row["layer"] for row in record.report}
    assert isinstance(result.model.fc2, nn.Linear)
    assert any(isinstance(m, tuple(MODULE_KINDS)) for m in result.model.modules())
    assert record.info["data_aware"] is True
    json.dumps(result.to_dict(), default=str)


def test_decomposed_model_survives_save_and_load(trained_digits_cnn, tmp_path):
    model, _ = _run(trained_digits_cnn, _x(), rank=3, factorization="auto")
    torchslim.save(model, tmp_path / "out")
    loaded = torchslim.load(tmp_path / "out", base_model=DigitsCNN(width=8))
    assert {type(m) for m in loaded.modules()} & set(MODULE_KINDS)
    torch.testing.assert_close(loaded.eval()(_x()), model.eval()(_x()))


def test_running_svd_twice_leaves_factor_modules_alone(trained_digits_cnn):
    model, _ = _run(trained_digits_cnn, _x(), rank=3)
    again = decompose(model, (_x(),), {**FAST, "rank": 2})
    assert again.report == [] and isinstance(model.conv2.first, nn.Conv2d)


def test_bench_quick_runs(tmp_path):
    out = tmp_path / "decompose.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "decompose.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["resnet"] and data["decompose_time"]
    assert "speedup" in proc.stdout
    # the decomposed models run in every runtime timed, the deployment ones (folded batch norms) included
    assert {row["runtime"] for row in data["resnet"] if row["method"] == "svd"} == {
        "eager", "channels_last", "torchscript", "onnxruntime"}


def test_the_0_1_spelling_kind_channel_still_validates_with_a_warning():
    engine = torchslim.Engine()
    with pytest.warns(DeprecationWarning, match="'kind' is now 'factorization'"):
        recipe = engine.recipe({"steps": [{"accelerate": {"method": "svd", "kind": "channel"}}], "evaluate": []})
    assert recipe.steps[0].options.factorization == "weight"


def test_a_mac_ratio_the_latency_gate_blocks_fails_the_step_naming_the_option(trained_digits_cnn):
    model = copy.deepcopy(trained_digits_cnn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(torchslim.ModelError, match=r"mac_ratio=0.5 \(model\) cannot be reached.*latency gate.*"
                                                   r"min_speedup.*measure_latency: false"):
        decompose(model, (_x(8),), {"mac_ratio": 0.5, "measure_latency": True, "min_speedup": 50.0,
                                    "latency_runs": 2})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
