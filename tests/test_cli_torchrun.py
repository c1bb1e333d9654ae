"""`torchslim run` works unchanged under a real torchrun with two processes (gloo on CPU)."""

from helpers import run_torchrun

import torchslim
from torchslim.zoo import DigitsCNN


def test_cli_run_works_unchanged_under_torchrun(tmp_path):
    (tmp_path / "data.py").write_text("from torchslim.demo import digits_loaders\n\n\n"
                                      "def loaders():\n    return digits_loaders(batch_size=64)\n")
    (tmp_path / "recipe.yaml").write_text("steps:\n  - compress: {method: magnitude, sparsity: 0.8}\n"
                                          "  - finetune: {method: sgd, steps: 5}\n"
                                          "  - finetune: {method: distill, steps: 3}\n"
                                          "evaluate: [accuracy, nonzeros]\n")
    proc = run_torchrun(["-m", "torchslim.cli", "run", "recipe.yaml", "--model", "torchslim.zoo:DigitsCNN",
                         "--data", "data:loaders", "--out", "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("2 finetune/sgd") == 1, proc.stdout   # the table is printed by rank 0 alone
    assert "differ between ranks" not in proc.stderr            # one input model, identical compression
    model = torchslim.load(tmp_path / "out" / "model", base_model=DigitsCNN())
    assert sum(int(m.sum()) for n, m in model.state_dict().items() if n.endswith(".mask")) > 0
