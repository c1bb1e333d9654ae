"""Automatic strategy search: sensitivity, allocation to a target, fine-tune, back off, cache."""

import pytest

import torchslim
from torchslim.demo import trained_digits_model
from torchslim.search import Knob, allocate, default_grid, strength_field


@pytest.fixture(scope="module")
def digits():
    return trained_digits_model(seed=0, epochs=6)


def search_recipe(cache_dir, **search):
    block = {
        "target": {"nonzeros": 0.25},
        "methods": [{"compress": {"method": "magnitude", "scope": "layer"}}],
        "grid": [0.5, 0.75, 0.9],
        "calibration_batches": 1,
        "finetune": {"finetune": {"method": "sgd", "epochs": 1, "lr": 0.02}},
        "cache_dir": str(cache_dir),
        "plot": False,
    }
    block.update(search)
    return {"evaluate": ["accuracy", "nonzeros"], "constraints": {"max_drop": {"accuracy": 0.02}}, "search": block}


def test_search_meets_target_and_constraint_then_reuses_its_cache(digits, tmp_path):
    model, train, test = digits
    engine = torchslim.Engine()
    result = engine.run(model, search_recipe(tmp_path), train_data=train, eval_data=test)
    summary = result.search
    assert summary["met"] and result.constraints_met
    assert result.final["nonzeros"] <= 0.27 * result.baseline["nonzeros"]
    assert result.baseline["accuracy"] - result.final["accuracy"] <= 0.02
    assert summary["trials"] == 5 * 3  # five prunable layers x three strengths
    layers = summary["attempts"][0]["layers"]
    assert layers and all(strength in (0.5, 0.75, 0.9) for strength in layers.values())
    assert [r.label for r in result.steps] == ["search:compress/magnitude", "finetune/sgd"]
    assert "search (nonzeros <= 0.25, met" in result.table()
    again = engine.run(model, search_recipe(tmp_path), train_data=train, eval_data=test)
    assert again.search["trials"] == 0
    assert again.search["attempts"][0]["layers"] == layers


def test_search_backs_off_and_says_so_when_constraints_fail(digits, tmp_path):
    model, train, test = digits
    recipe = search_recipe(tmp_path, target={"nonzeros": 0.05}, grid=[0.9, 0.99], finetune=None, retries=2)
    recipe["constraints"] = {"max_drop": {"accuracy": 0.0}}
    result = torchslim.Engine().run(model, recipe, train_data=train, eval_data=test)
    attempts = result.search["attempts"]
    assert 2 <= len(attempts) <= 3
    assert not attempts[0]["constraints_met"], "pruning 95% without fine-tuning must cost accuracy"
    targets = [a["target"] for a in attempts]
    assert targets[0] == 0.05 and targets == sorted(targets) and len(set(targets)) == len(targets)
    # a weaker target may satisfy the accuracy constraint, but the asked-for target is then missed
    assert not result.search["target_met"] and not result.search["met"] and not result.constraints_met
    assert "NOT met" in result.table()


def test_allocation_prefers_cheap_losses():
    cheap = Knob(0, None, "s", "a", [0.5, 0.9], {0.5: {"loss": 0.0, "saving": 5.0}, 0.9: {"loss": 0.01, "saving": 9.0}})
    dear = Knob(0, None, "s", "b", [0.5, 0.9], {0.5: {"loss": 0.3, "saving": 5.0}, 0.9: {"loss": 0.6, "saving": 9.0}})
    cheap.template = dear.template = type("T", (), {"method": "m"})()
    assert allocate([cheap, dear], needed=9.0) == {"0:m:a": 0.9}
    assert allocate([cheap, dear], needed=12.0) == {"0:m:a": 0.9, "0:m:b": 0.5}


def _knob(layer: str, points: dict[float, tuple[float, float]]) -> Knob:
    knob = Knob(0, type("T", (), {"method": "m"})(), "s", layer, sorted(points),
                {s: {"loss": loss, "saving": saving} for s, (loss, saving) in points.items()})
    return knob


def test_allocation_is_an_exact_knapsack_not_a_greedy_overshoot():
    # Greedy by loss per saving takes b first (0.05 for 9), then needs a too: loss 0.15, saving 19.
    # The least loss that saves 10 is a alone.
    knobs = [_knob("a", {0.9: (0.1, 10.0)}), _knob("b", {0.9: (0.05, 9.0)}), _knob("c", {0.9: (0.2, 2.0)})]
    assert allocate(knobs, needed=10.0) == {"0:m:a": 0.9}


def test_allocation_breaks_metric_ties_by_output_distortion_then_by_less_overshoot():
    knobs = [_knob("a", {0.5: (0.0, 6.0), 0.9: (0.0, 12.0)}), _knob("b", {0.5: (0.0, 6.0)})]
    knobs[0].points[0.9]["distortion"] = 0.5
    knobs[1].points[0.5]["distortion"] = 0.1
    knobs[0].points[0.5]["distortion"] = 0.1
    assert allocate(knobs, needed=10.0) == {"0:m:a": 0.5, "0:m:b": 0.5}
    assert allocate(knobs, needed=6.0) in ({"0:m:a": 0.5}, {"0:m:b": 0.5})


def test_allocation_out_of_reach_takes_the_strongest_setting_everywhere():
    knobs = [_knob("a", {0.5: (0.0, 1.0), 0.9: (0.3, 2.0)}), _knob("b", {0.5: (0.1, 1.0)})]
    assert allocate(knobs, needed=100.0) == {"0:m:a": 0.9, "0:m:b": 0.5}


def test_strength_knob_and_default_grid_come_from_the_options_model():
    engine = torchslim.Engine()
    options = engine.registry.options_model("compress", "magnitude")
    knob = strength_field(options)
    assert knob == "sparsity"
    grid = default_grid(options, knob)
    assert len(grid) == 8 and 0 < grid[0] < grid[-1] < 1


@pytest.mark.parametrize("bad, message", [
    ({"target": {"macs": 1.5}}, "must be in (0, 1]"),
    ({"target": {"flops": 0.5}}, "no installed evaluator returns 'flops'; lower-is-better metrics: "),
    ({"target": {"accuracy": 0.5}}, "'accuracy' is higher-is-better; a target is a cost to cut"),
    ({"target": {"macs": 0.5, "params": 0.5}}, "exactly one target"),
    ({"methods": [{"compress": {"method": "magnitude", "sparsity": 2}}]}, "search.methods[1] (compress/magnitude)"),
])
def test_bad_search_blocks_are_rejected_before_work(tmp_path, bad, message):
    recipe = search_recipe(tmp_path)
    recipe["search"].update(bad)
    with pytest.raises(torchslim.RecipeError) as info:
        torchslim.Engine().recipe(recipe)
    assert message in str(info.value)


def test_a_target_may_name_the_evaluator_of_its_metric(tmp_path):
    recipe = search_recipe(tmp_path)
    recipe["search"]["target"] = {"size": 0.5}  # the evaluator 'size' returns one metric, size_bytes
    recipe["evaluate"] = ["accuracy", "size"]
    assert torchslim.Engine().recipe(recipe).search.target == {"size_bytes": 0.5}


def test_bench_search_quick_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "search.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "search (warm cache)" in proc.stdout and "uniform svd" in proc.stdout
