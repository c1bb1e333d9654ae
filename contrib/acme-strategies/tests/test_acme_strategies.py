"""ACME's strategy package, installed with pip: listed, validated, and run by name."""

import json
import subprocess

SUBPROCESS_TIMEOUT = 1800  # far above ten times the quiet-machine time: a busy machine must not fail it
import sys
from pathlib import Path

import pytest

import torchslim
from torchslim.testing import check_strategy, model_snapshot

TORCHSLIM = str(Path(sys.executable).parent / "torchslim")


def test_acme_mobile_is_listed_with_its_package():
    proc = subprocess.run([TORCHSLIM, "strategies", "--json"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["acme-mobile"]["distribution"] == "acme-strategies"
    assert rows["prune-80"]["distribution"] == "torchslim"  # built-ins and ours side by side


def test_acme_mobile_validates_against_the_installed_methods(torchslim_engine):
    recipe = check_strategy(torchslim_engine, "acme-mobile", distribution="acme-strategies")
    assert [step.method for step in recipe.steps] == ["magnitude", "sgd"]
    assert recipe.constraints.max_drop == {"accuracy": 0.02}


def test_engine_runs_acme_mobile_by_name(torchslim_engine, torchslim_tiny_task):
    task = torchslim_tiny_task
    before = model_snapshot(task.model)
    result = torchslim_engine.run(task.model, "acme-mobile", **task.run_kwargs())
    assert [record.label for record in result.steps] == ["compress/magnitude", "finetune/sgd"]
    assert result.final["sparsity"] > 0.6  # 70% of the weights; biases and norms are not pruned
    assert result.constraints and result.constraints[0]["constraint"] == "max_drop.accuracy"
    assert result.constraints_met == (result.baseline["accuracy"] - result.final["accuracy"] <= 0.02)
    assert not torchslim.testing.snapshots.differences(before, model_snapshot(task.model))


def test_acme_edge_int8_needs_and_uses_torchslim_quantize(torchslim_engine):
    pytest.importorskip("torchslim_quantize")
    recipe = check_strategy(torchslim_engine, "acme-edge-int8", distribution="acme-strategies")
    assert recipe.steps[-1].method == "int8"
