"""Data-parallel calibration: under ``torchrun --nproc-per-node 2`` (gloo, CPU) each rank gathers the
statistics of its share of the calibration batches and the sum over ranks equals what one process
gathers from all of them; ``magnitude`` with reconstruction then makes the same weights on every rank
as in one process. The run is ``tests/calibration_ddp_script.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import run_torchrun
from safetensors.torch import load_file

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # two torchrun ranks and one process: ~30 s

SCRIPT = Path(__file__).resolve().parent / "calibration_ddp_script.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calibration-ddp")
    proc = run_torchrun([str(SCRIPT), str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    spec = importlib.util.spec_from_file_location("calibration_ddp_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(out)
    return out


def test_summed_statistics_equal_one_process(runs):
    single = load_file(str(runs / "stats-single.safetensors"))
    assert (runs / "info-rank0.txt").read_text().startswith("True")  # each rank really read a share
    for rank in (0, 1):
        shared = load_file(str(runs / f"stats-rank{rank}.safetensors"))
        assert shared.keys() == single.keys()
        for key, value in single.items():
            if key.endswith(".rows"):
                assert int(shared[key]) == int(value) == 6 * (48 - 5 - 8)  # real tokens only
            else:
                torch.testing.assert_close(shared[key], value, rtol=1e-9, atol=1e-9, msg=key)


def test_reconstructed_weights_match_one_process_on_every_rank(runs):
    single = load_file(str(runs / "pruned-single.safetensors"))
    for rank in (0, 1):
        pruned = load_file(str(runs / f"pruned-rank{rank}.safetensors"))
        for key, value in single.items():
            assert torch.equal(pruned[key] == 0, value == 0), f"rank {rank}: mask of {key} differs"
            torch.testing.assert_close(pruned[key], value, rtol=1e-4, atol=1e-5, msg=key)
