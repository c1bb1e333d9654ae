"""A run killed with SIGKILL mid-fine-tune resumes from its last checkpoint to the same result."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import torchslim

TORCHSLIM = str(Path(sys.executable).parent / "torchslim")

MODULE = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchslim.demo import digits_tensors
from torchslim.zoo import DigitsCNN


def build():
    torch.manual_seed(0)
    return DigitsCNN(width=8)


def data():
    x_train, y_train, x_test, y_test = digits_tensors()
    gen = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True, generator=gen),
            DataLoader(TensorDataset(x_test, y_test), batch_size=256))
"""

RECIPE = """
steps:
  - compress: {method: magnitude, sparsity: 0.7}
  - finetune: {method: sgd, epochs: 12, lr: 0.02}
  - compress: {method: magnitude, sparsity: 0.8}
evaluate: [accuracy, nonzeros]
"""


def start(project: Path, out: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(project), OMP_NUM_THREADS="1")
    return subprocess.Popen([TORCHSLIM, "run", "recipe.yaml", "--model", "resumable:build", "--data",
                             "resumable:data", "--out", out, "--seed", "3"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_finetune_then_rerun_gives_the_uninterrupted_result(tmp_path):
    (tmp_path / "resumable.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    progress = tmp_path / "killed" / "checkpoints" / "progress.json"

    victim = start(tmp_path, "killed")
    deadline = time.time() + 240
    while not progress.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert progress.exists(), victim.communicate()
    time.sleep(0.5)  # well inside the 12-epoch fine-tuning of step 2
    assert victim.poll() is None, "the run finished before it could be killed; lengthen step 2"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert '"checkpoint": "step-001"' in progress.read_text()

    resumed, whole = start(tmp_path, "killed"), start(tmp_path, "whole")
    for proc in (resumed, whole):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err

    sys.path.insert(0, str(tmp_path))
    try:
        import resumable
        a = torchslim.load(tmp_path / "killed" / "model", base_model=resumable.build())
        b = torchslim.load(tmp_path / "whole" / "model", base_model=resumable.build())
    finally:
        sys.path.remove(str(tmp_path))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "resumed run differs from the uninterrupted one"
