"""The torchslim command: help everywhere, plugins table, run with a user's model, clean errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from torchslim.cli import build_parser
from helpers import SUBPROCESS_TIMEOUT

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
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return train, test


def not_a_model():
    return 42
"""

RECIPE = """
steps:
  - finetune: {method: sgd, epochs: 2, lr: 0.1}
evaluate: [accuracy, params]
"""


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(cwd or "."))
    return subprocess.run([TORCHSLIM, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path


@pytest.mark.parametrize("command", [[], ["plugins"], ["strategies"], ["run"], ["check"], ["export"], ["demo"]])
def test_help_everywhere(command):
    proc = cli(*command, "--help")
    assert proc.returncode == 0 and "usage: torchslim" in proc.stdout


def test_plugins_lists_builtins_with_distribution_and_version():
    proc = cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["sgd"]["stage"] == "finetune" and rows["sgd"]["distribution"] == "torchslim"
    assert rows["sgd"]["version"] and rows["sgd"]["status"] == "loaded"
    table = cli("plugins").stdout
    assert "name" in table and "distribution" in table and "sgd" in table


def test_run_writes_report_and_model(project):
    proc = cli("run", "recipe.yaml", "--model", "usermodels:build", "--data", "usermodels:data",
               "--out", "out", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout and "1 finetune/sgd" in proc.stdout
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["steps"][0]["metrics"]["accuracy"] > report["baseline"]["accuracy"]
    assert (project / "out" / "report.md").read_text().startswith("# torchslim report")
    assert (project / "out" / "model" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.yaml", "--model", "usermodels:build", "--out", "o"], "recipe file 'missing.yaml' does not exist"),
        (["run", "recipe.yaml", "--model", "nosuchmodule:build", "--out", "o"], "cannot import module 'nosuchmodule'"),
        (["run", "recipe.yaml", "--model", "usermodels", "--out", "o"], "must look like 'package.module:callable'"),
        (["run", "recipe.yaml", "--model", "usermodels:not_a_model", "--out", "o"], "returned int, not a torch.nn.Module"),
        (["run", "recipe.yaml", "--model", "usermodels:nope", "--out", "o"], "has no attribute 'nope'"),
        (["run", "--model", "usermodels:build", "--out", "o"], "exactly one"),
        (["run", "bad.yaml", "--model", "usermodels:build", "--out", "o"], "step 1 (finetune/sgd)"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(project, args, message):
    (project / "bad.yaml").write_text("steps:\n  - finetune: {method: sgd, epochs: -1}\n")
    proc = cli(*args, cwd=project)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("torchslim: error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_recipe_with_several_problems_shows_one_a_line(project):
    (project / "bad.yaml").write_text("steps:\n  - finetune: {method: sgd, epochs: -1}\n"
                                      "  - compress: {method: magnitude, sparsity: 2}\n")
    proc = cli("run", "bad.yaml", "--model", "usermodels:build", "--data", "usermodels:data", "--out", "o",
               cwd=project)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any("step 1 (finetune/sgd)" in line for line in lines[1:])
    assert any("step 2 (compress/magnitude)" in line for line in lines[1:])


def test_what_a_recipe_needs_is_checked_before_the_first_step(project):
    proc = cli("run", "recipe.yaml", "--model", "usermodels:build", "--out", "out", cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert "step 1 (finetune/sgd) needs train_data" in proc.stderr and "--data" in proc.stderr
    assert not (project / "out" / "checkpoints").exists()  # nothing ran


def test_an_unmet_constraint_exits_3_after_writing_the_outputs(project):
    (project / "strict.yaml").write_text(RECIPE + "constraints: {max_ratio: {params: 0.5}}\n")
    proc = cli("run", "strict.yaml", "--model", "usermodels:build", "--data", "usermodels:data", "--out", "out",
               cwd=project)
    assert proc.returncode == 3, proc.stderr
    assert "FAILED max_ratio.params" in proc.stdout
    assert (project / "out" / "model" / "manifest.json").is_file()


def test_parser_has_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"plugins", "strategies", "run", "demo"}


def test_run_then_export_onnx_and_torchscript(project):
    pytest.importorskip("onnxruntime")
    proc = cli("run", "recipe.yaml", "--model", "usermodels:build", "--data", "usermodels:data",
               "--out", "out", cwd=project)
    assert proc.returncode == 0, proc.stderr
    proc = cli("export", "out/model", "--model", "usermodels:build", "--data", "usermodels:data",
               "--onnx", "m.onnx", "--torchscript", "m.pt", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (project / "m.onnx").stat().st_size > 0 and (project / "m.pt").stat().st_size > 0
    frozen = cli("export", "out/model", "--model", "usermodels:build", "--data", "usermodels:data",
                 "--torchscript", "frozen.pt", "--freeze", cwd=project)
    assert frozen.returncode == 0, frozen.stderr
    assert not list(torch.jit.load(str(project / "frozen.pt")).parameters())   # weights are constants
    lone = cli("export", "out/model", "--model", "usermodels:build", "--data", "usermodels:data",
               "--onnx", "m.onnx", "--freeze", cwd=project)
    assert lone.returncode == 2 and "--freeze applies to the TorchScript file" in lone.stderr
    bad = cli("export", "out/model", "--model", "usermodels:build", "--onnx", "m.onnx", cwd=project)
    assert bad.returncode == 2 and "needs an example input" in bad.stderr


def test_check_previews_a_recipe_without_training(project):
    (project / "prune.yaml").write_text(
        "steps:\n  - compress: {method: magnitude, sparsity: 0.5}\n  - finetune: {method: sgd, epochs: 50}\n"
    )
    proc = cli("check", "prune.yaml", "--model", "usermodels:build", "--input-shape", "1x64", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "compress/magnitude" in proc.stdout and "not run" in proc.stdout
    data = json.loads(cli("check", "prune.yaml", "--model", "usermodels:build", "--data", "usermodels:data",
                          "--json", cwd=project).stdout)
    assert data["steps"][0]["status"] == "ok"
