"""Does svd's latency gate take the same decisions on a quiet and a busy machine?

Runs the same svd step (a MAC budget spread by measured layer time, with a realized-speedup gate: the
options whose outcome leans most on timings) several times quiet and several times with CPU-bound
processes beside it, once measuring afresh every run (``latency_table: false``) and once reading the
per-machine latency table (measured on the first run). Counts the distinct models each way.

    python bench/determinism.py [--quick] [--runs N] [--burners K]

Prints a table and writes bench/results/determinism.json (determinism-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_threads  # noqa: E402

from torchslim.errors import ModelError  # noqa: E402
from torchslim.plugins.svd import decompose  # noqa: E402
from torchslim.surgery import fingerprint  # noqa: E402

BURN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(96, 32, 1)).eval()


def one_run(net: nn.Module, x: torch.Tensor, table: bool) -> tuple[str, list]:
    """The resulting model's fingerprint and ranks, or the error when the budget was judged unreachable."""
    net = copy.deepcopy(net)
    try:
        result = decompose(net, (x,), {"mac_ratio": 0.7, "measure_latency": True, "spread_by": "latency",
                                       "min_realized": 0.3, "latency_runs": 5, "latency_table": table})
    except ModelError as error:
        return "error: " + str(error).split(":")[1].strip(), []
    ranks = [row["rank"] for row in result.report]
    return fingerprint(net), ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs each way, a small input (smoke test)")
    parser.add_argument("--runs", type=int, default=4, help="runs per load condition and mode")
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes beside the busy runs")
    args = parser.parse_args()
    torch.set_num_threads(bench_threads(2))
    runs = 2 if args.quick else args.runs
    net, x = model(), torch.randn(2 if args.quick else 8, 32, 24, 24)
    rows, record = [], {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHSLIM_CACHE_DIR"] = cache
        for table in (False, True):
            seen: dict[str, list[str]] = {"quiet": [], "busy": []}
            ranks: dict[str, list] = {}
            for load in ("quiet", "busy"):
                procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners)] \
                    if load == "busy" else []
                try:
                    for _ in range(runs):
                        digest, chosen = one_run(net, x, table)
                        seen[load].append(digest[:12])
                        ranks.setdefault(digest[:12], chosen)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
            distinct = len(set(seen["quiet"] + seen["busy"]))
            mode = "latency table" if table else "measured every run"
            rows.append([mode, runs, runs, len(set(seen["quiet"])), len(set(seen["busy"])), distinct])
            record[mode] = {"models": seen, "ranks": ranks, "distinct": distinct}
    headers = ["timings", "quiet runs", "busy runs", "distinct quiet", "distinct busy", "distinct overall"]
    print(tabulate(rows, headers=headers))
    out = Path(__file__).parent / "results" / ("determinism-quick.json" if args.quick else "determinism.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "burners": args.burners, "rows": rows,
                               "headers": headers, "detail": record}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
