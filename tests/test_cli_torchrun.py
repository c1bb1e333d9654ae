"""`torchslim run` works unchanged under a real torchrun with two processes (gloo on CPU)."""

import os, subprocess, sys
from pathlib import Path

import torchslim
from torchslim.zoo import DigitsCNN
from helpers import SUBPROCESS_TIMEOUT


def torchrun():
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def test_cli_run_works_unchanged_under_torchrun(tmp_path):
    (tmp_path / "data.py").write_text("from torchslim.demo import digits_loaders\n\n\n"
                                      "def loaders():\n    return digits_loaders(batch_size=64)\n")
    (tmp_path / "recipe.yaml").write_text("steps:\n  - compress: {method: magnitude, sparsity: 0.8}\n"
                                          "  - finetune: {method: sgd, steps: 5}\n"
                                          "  - finetune: {method: distill, steps: 3}\n"
                                          "evaluate: [accuracy, nonzeros]\n")
    command = [*torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "torchslim.cli", "run", "recipe.yaml",
               "--model", "torchslim.zoo:DigitsCNN", "--data", "data:loaders", "--out", "out"]
    proc = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("2 finetune/sgd") == 1, proc.stdout   # the table is printed by rank 0 alone
    assert "differ between ranks" not in proc.stderr            # one input model, identical compression
    model = torchslim.load(tmp_path / "out" / "model", base_model=DigitsCNN())
    assert sum(int(m.sum()) for n, m in model.state_dict().items() if n.endswith(".mask")) > 0
