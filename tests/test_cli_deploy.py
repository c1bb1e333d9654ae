"""``torchslim deploy``: every installed runtime tried, measured on its artifact, checked against the recipe."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from helpers import SUBPROCESS_TIMEOUT
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim.engine.deployment import compare_runtimes
from torchslim.zoo import MLP

TORCHSLIM = str(Path(sys.executable).parent / "torchslim")

USER_MODULE = """
import torch
from torchslim.zoo import MLP
from torchslim.demo import digits_tensors
from torch.utils.data import DataLoader, TensorDataset


def build():
    torch.manual_seed(0)
    return MLP((64, 32, 10))


def data():
    x_train, y_train, x_test, y_test = digits_tensors()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=False)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=128)
    return train, test
"""

RECIPE = """
steps:
  - finetune: {method: sgd, epochs: 3, lr: 0.1}
  - deploy: {method: onnxruntime}
evaluate: [accuracy, latency, size]
evaluation: {latency_runs: 5, latency_warmup: 1}
constraints: {max_drop: {accuracy: 0.05}}
"""


def test_deploy_command_prints_every_runtime_with_latency_size_and_accuracy(tmp_path):
    (tmp_path / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([TORCHSLIM, "deploy", "recipe.yaml", "--model", "usermodels:build", "--data", "usermodels:data",
                           "--runtimes", "onnxruntime,torchscript", "--json"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torchscript", "fp32")]
    for row in rows:
        assert row["status"] == "ok" and row["latency_ms"] > 0 and row["size_bytes"] > 0
        assert row["accuracy"] > 0.8 and row["meets"] is True  # a trained MLP: the baseline is ~0.1
    assert rows[1]["accuracy"] == rows[0]["accuracy"]  # fp32 ONNX Runtime scores as the eager model
    assert rows[2]["size_bytes"] < rows[1]["size_bytes"]  # int8 weights


class FarAwayRuntime:
    """A third party's runtime that cannot run on this machine."""

    @staticmethod
    def available():
        return "needs an accelerator card (pip install faraway-runtime)"

    @torchslim.hookimpl
    def deploy(self, model, step, context):
        raise AssertionError("never called when unavailable")


def test_unavailable_runtimes_are_listed_as_skipped_with_the_reason_and_constraints_are_marked():
    engine = torchslim.Engine()
    engine.register(FarAwayRuntime(), name="faraway")
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    loader = DataLoader(TensorDataset(x, MLP((16, 8, 3))(x).argmax(1).detach()), batch_size=32)
    torch.manual_seed(0)
    recipe = {"evaluate": ["accuracy", "size"], "constraints": {"max_ratio": {"size_bytes": 0.5}}}
    result = engine.run(MLP((16, 8, 3)), recipe, eval_data=loader)
    rows = compare_runtimes(engine, result, eval_data=loader, train_data=loader,
                            runtimes=["faraway", "onnxruntime"])
    by_name = {(r["runtime"], r["precision"]): r for r in rows}
    assert by_name[("faraway", "fp32")]["status"] == "skipped: needs an accelerator card (pip install faraway-runtime)"
    assert by_name[("faraway", "fp32")]["meets"] is None
    # size is the artifact's: an fp32 ONNX file is not half the saved eager model, so it misses max_ratio
    assert by_name[("onnxruntime", "fp32")]["meets"] is False and by_name[("eager", "fp32")]["meets"] is False
