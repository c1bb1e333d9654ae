"""Built-in strategies: listed with their package, run by name from Python and from the command line."""

import json
import textwrap

import pytest
import torch

import torchslim
from torchslim.cli import main
from torchslim.masks import masked_parameters
from torchslim.measure import count_macs
from torchslim.plugins.strategies import STRATEGIES
from torchslim.testing import check_strategy, model_snapshot

USER_MODULE = """
from torchslim.testing import tiny_task


def build():
    return tiny_task(train_steps=30).model


def data():
    task = tiny_task(train_steps=30)
    return {"train_data": task.train_data, "eval_data": task.eval_data, "example_inputs": task.example_inputs}
"""


def test_strategies_command_lists_the_builtins_with_their_package(capsys):
    assert main(["strategies", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    for name in STRATEGIES:
        assert rows[name]["distribution"] == "torchslim"
        assert rows[name]["description"] == STRATEGIES[name][0]
    assert main(["strategies"]) == 0
    assert "prune-80" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_builtin_strategy_validates_against_the_installed_methods(torchslim_engine, name):
    recipe = check_strategy(torchslim_engine, name, distribution="torchslim")
    assert recipe.steps[-1].stage == "finetune" and recipe.name == name


def test_engine_runs_prune_80_by_name(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    before = model_snapshot(task.model)
    result = torchslim_engine.run(task.model, "prune-80", **task.run_kwargs())
    assert [record.label for record in result.steps] == ["compress/magnitude", "finetune/sgd"]
    masked = masked_parameters(result.model)
    total = sum(mask.numel() for *_, mask in masked)
    kept = sum(int(mask.sum()) for *_, mask in masked)
    assert abs(1 - kept / total - 0.8) < 0.01  # 80 % of the targeted weights, ranked globally
    pruned, tuned = (record.metrics["accuracy"] for record in result.steps)
    assert tuned >= pruned and tuned > 0.5  # fine-tuning recovers; chance is 0.25
    assert not torchslim.testing.snapshots.differences(before, model_snapshot(task.model))


def test_slim_mobile_factors_then_prunes_the_factors(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    result = torchslim_engine.run(task.model, "slim-mobile", **task.run_kwargs())
    names = {type(m).__name__ for m in result.model.modules()}
    assert names & {"LowRankLinear", "ChannelLowRankConv", "SpatialLowRankConv2d"}
    assert any(".first" in name or ".second" in name for name, *_ in masked_parameters(result.model))
    assert result.final["macs"] <= 0.6 * result.baseline["macs"] + 1
    assert result.final["accuracy"] > 0.5


def test_cli_runs_svd_2x_by_name_and_the_saved_model_loads(tmp_path, monkeypatch, capsys):
    (tmp_path / "stratmodels.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--strategy", "svd-2x", "--model", "stratmodels:build", "--data", "stratmodels:data",
                 "--out", "out"]) == 0
    assert "1 accelerate/svd" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recipe"]["name"] == "svd-2x"
    assert report["steps"][-1]["metrics"]["macs"] <= 0.5 * report["baseline"]["macs"] + 1

    import stratmodels

    loaded = torchslim.load(tmp_path / "out" / "model", base_model=stratmodels.build())
    x = torch.randn(4, 1, 8, 8)
    assert count_macs(loaded, (x,)) == report["steps"][-1]["metrics"]["macs"] * 4 / 8  # measured at batch 8


def test_unknown_strategy_names_the_known_ones(torchslim_engine, torchslim_tiny_task, capsys):
    with pytest.raises(torchslim.RecipeError, match="strategies: .*prune-80"):
        torchslim_engine.run(torchslim_tiny_task.model, "prune-90")
    assert main(["run", "--strategy", "prune-90", "--model", "x:y", "--out", "o"]) == 2
    assert "prune-90" in capsys.readouterr().err
