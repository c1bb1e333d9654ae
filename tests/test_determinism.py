"""Decisions taken on measured time do not flip with machine load: the per-machine latency table."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.latency_table import LatencyTable, machine_key, pair_key
from torchslim.plugins.svd import decompose
from torchslim.surgery import fingerprint

BURN = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


def _convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 32, 1)).eval()


# latency-weighted budget plus a realized-speedup gate: the svd options whose outcome leans most on timings
OPTIONS = {"mac_ratio": 0.6, "measure_latency": True, "spread_by": "latency", "min_realized": 0.3,
           "latency_runs": 3}


def _decompose(model: nn.Module, x: torch.Tensor, **extra) -> tuple[str, dict]:
    model = copy.deepcopy(model)
    result = decompose(model, (x,), {**OPTIONS, **extra})
    return fingerprint(model), result.info


@pytest.fixture
def burners():
    """Two CPU-bound processes (as many as this machine's cores) running beside the test."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_same_svd_step_gives_the_same_model_on_a_quiet_and_a_busy_machine(tmp_path, monkeypatch, burners):
    monkeypatch.setenv("TORCHSLIM_CACHE_DIR", str(tmp_path))
    model, x = _convs(), torch.randn(2, 32, 24, 24)
    for proc in burners:  # the first run measures on a machine as quiet as this test can make it
        proc.send_signal(19)  # SIGSTOP
    quiet, first = _decompose(model, x)
    for proc in burners:
        proc.send_signal(18)  # SIGCONT: both cores busy from here on
    busy, second = _decompose(model, x)
    assert first["latency_table"]["measured"] > 0 and first["latency_table"]["reused"] == 0
    assert second["latency_table"] == {"path": str(tmp_path / "latency.json"), "reused": first["latency_table"]
                                       ["measured"], "measured": 0}
    assert busy == quiet
    assert first["mac_ratio"] == second["mac_ratio"] <= 0.6 + 1e-6


def test_the_table_is_keyed_by_machine_threads_and_shapes(tmp_path):
    a, b = nn.Linear(16, 16), nn.Sequential(nn.Linear(16, 4, bias=False), nn.Linear(4, 16))
    x = torch.randn(3, 16)
    keys = {pair_key(a, b, x), pair_key(a, b, torch.randn(5, 16)), pair_key(nn.Linear(16, 32), b, x)}
    assert len(keys) == 3
    assert pair_key(a, b, x) == pair_key(copy.deepcopy(a), copy.deepcopy(b), x)  # values do not matter
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert pair_key(a, b, x) not in keys and f"{threads + 1} threads" in machine_key()
    finally:
        torch.set_num_threads(threads)

    table = LatencyTable(tmp_path / "t.json")
    calls = []
    assert table.pair(a, b, x, lambda: calls.append(1) or (2.0, 1.0)) == (2.0, 1.0)
    assert LatencyTable(tmp_path / "t.json").pair(a, b, x, lambda: calls.append(1) or (9.0, 9.0)) == (2.0, 1.0)
    assert calls == [1]


def test_an_unreadable_table_is_measured_afresh(tmp_path, caplog):
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    table = LatencyTable(path)
    a, b, x = nn.Linear(8, 8), nn.Linear(8, 8), torch.randn(2, 8)
    assert table.pair(a, b, x, lambda: (1.0, 1.5)) == (1.0, 1.5)
    assert "unreadable" in caplog.text
    assert json.loads(path.read_text())["version"] == 1


def test_latency_table_false_measures_every_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE_DIR", str(tmp_path))
    _, info = _decompose(_convs(), torch.randn(1, 32, 12, 12), latency_table=False)
    assert info["latency_table"] is None and not Path(tmp_path / "latency.json").exists()
