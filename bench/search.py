"""Automatic strategy search vs uniform allocation, on the digits CNN (and a ResNet-18 latency target).

Prints a table and writes bench/results/search.json (search-quick.json with --quick).

    python bench/search.py            # digits: macs 0.5 within 1 accuracy point; resnet18: latency 0.6
    python bench/search.py --quick    # tiny settings, seconds; the test suite runs this
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim.demo import trained_digits_model
from torchslim.tables import rows_table

from common import bench_threads
from torchslim.zoo import resnet18

RESULTS = Path(__file__).resolve().parent / "results"


def digits_case(quick: bool, cache: Path) -> list[dict]:
    """Search vs uniform svd at the same global MAC ratio; accuracy before and after fine-tuning."""
    model, train, test = trained_digits_model(seed=0, epochs=3 if quick else 12)
    engine = torchslim.Engine()
    epochs = 1 if quick else 3
    finetune = {"finetune": {"method": "sgd", "epochs": epochs, "lr": 0.02}}
    svd_opts = {"method": "svd", "measure_latency": False}
    search = {
        "evaluate": ["accuracy", "macs"], "constraints": {"max_drop": {"accuracy": 0.01}},
        "search": {"target": {"macs": 0.5}, "methods": [{"accelerate": dict(svd_opts)}],
                   "grid": [0.6, 0.4, 0.25] if quick else [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
                   "calibration_batches": 1 if quick else 2, "finetune": finetune,
                   "cache_dir": str(cache), "plot": False, "retries": 2},
    }
    rows = []
    for label in ("search (cold cache)", "search (warm cache)"):
        start = time.perf_counter()
        result = engine.run(model, search, train_data=train, eval_data=test)
        seconds = time.perf_counter() - start
        first = result.search["attempts"][0]
        rows.append({
            "case": "digits", "method": label, "macs_ratio": result.final["macs"] / result.baseline["macs"],
            "acc_baseline": result.baseline["accuracy"], "acc_before_ft": first["accuracy_before_finetune"],
            "acc_after_ft": result.final["accuracy"], "target_met": result.search["target_met"],
            "constraints_met": result.search["constraints_met"], "attempts": len(result.search["attempts"]),
            "seconds": seconds,
        })
    search_macs = rows[0]["macs_ratio"]
    rows.append(uniform_row(engine, model, train, test, svd_opts, finetune, target=0.5))
    if abs(search_macs - 0.5) > 0.02:  # compare at the ratio the search reached too
        rows.append(uniform_row(engine, model, train, test, svd_opts, finetune, target=search_macs))
    allocator = {"evaluate": ["accuracy", "macs"],
                 "steps": [{"accelerate": {**svd_opts, "mac_ratio": 0.5, "mac_scope": "model"}}, finetune]}
    rows.append(step_row(engine, model, train, test, allocator, "svd mac_ratio 0.5 (its own spectrum allocator)"))
    return rows


def step_row(engine: torchslim.Engine, model, train, test, recipe: dict, label: str) -> dict:
    """Run a plain recipe (one compression step, then fine-tuning) and report it like a search row."""
    start = time.perf_counter()
    result = engine.run(model, recipe, train_data=train, eval_data=test)
    ratio = result.final["macs"] / result.baseline["macs"]
    return {
        "case": "digits", "method": label, "macs_ratio": ratio, "acc_baseline": result.baseline["accuracy"],
        "acc_before_ft": result.steps[0].metrics["accuracy"], "acc_after_ft": result.final["accuracy"],
        "target_met": ratio <= 0.52, "constraints_met": result.baseline["accuracy"] - result.final["accuracy"] <= 0.01,
        "attempts": 1, "seconds": time.perf_counter() - start,
    }


def uniform_row(engine: torchslim.Engine, model, train, test, svd_opts: dict, finetune: dict, target: float,
                label: str | None = None) -> dict:
    """Uniform allocation: one ``rank_ratio`` for every layer, bisected to the largest one within ``target`` MACs."""
    from torchslim.measure import count_macs

    x = (next(iter(test))[0][:8],)
    before = count_macs(model, x)
    lo, hi = 0.0, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = engine.run(model, {"steps": [{"accelerate": {**svd_opts, "rank_ratio": mid}}], "evaluate": []},
                           example_inputs=x).model
        if count_macs(trial, x) <= target * before:
            lo = mid
        else:
            hi = mid
    recipe = {"evaluate": ["accuracy", "macs"], "steps": [{"accelerate": {**svd_opts, "rank_ratio": lo}}, finetune]}
    return step_row(engine, model, train, test, recipe,
                    label or f"uniform svd (rank_ratio {lo:.3f} everywhere) at MAC ratio {target}")


def resnet_case(quick: bool, cache: Path) -> list[dict]:
    """A latency target on a ResNet-18 with synthetic-labelled data (labels from a fixed random model)."""
    torch.manual_seed(0)
    size = 32 if quick else 64
    model = resnet18(classes=10).eval()
    x = torch.randn(64 if quick else 256, 3, size, size)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: accuracy 1.0 at the start, drop = damage
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    recipe = {
        "evaluate": ["accuracy", "latency", "macs"],
        "evaluation": {"latency_runs": 10 if quick else 30, "threads": 2},
        "search": {"target": {"latency": 0.6},
                   "methods": [{"accelerate": {"method": "channel", "targets": {"include": ["layer*"]}}}],
                   "grid": [0.25, 0.5] if quick else [0.2, 0.35, 0.5, 0.65],
                   "calibration_batches": 1, "cache_dir": str(cache), "plot": False, "retries": 1,
                   "finetune": {"finetune": {"method": "sgd", "epochs": 2 if quick else 8, "lr": 0.01}}},
        "constraints": {"max_drop": {"accuracy": 0.05}},
    }
    start = time.perf_counter()
    result = torchslim.Engine().run(model, recipe, train_data=data, eval_data=data,
                                    example_inputs=(x[:8],))
    return [{
        "case": f"resnet18 {size}px", "method": "search channel, latency 0.6",
        "latency_ratio": result.final["latency_ms"] / result.baseline["latency_ms"],
        "macs_ratio": result.final["macs"] / result.baseline["macs"], "acc_baseline": result.baseline["accuracy"],
        "acc_before_ft": result.search["attempts"][-1]["accuracy_before_finetune"],
        "acc_after_ft": result.final["accuracy"], "target_met": result.search["target_met"],
        "constraints_met": result.search["constraints_met"], "attempts": len(result.search["attempts"]),
        "seconds": time.perf_counter() - start,
    }]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--skip-resnet", action="store_true", help="only the digits case")
    args = parser.parse_args()
    torch.set_num_threads(bench_threads(2))
    with tempfile.TemporaryDirectory() as cache:
        rows = digits_case(args.quick, Path(cache))
        if not (args.skip_resnet or args.quick):  # latency targets need a quiet machine and minutes
            try:
                rows += resnet_case(args.quick, Path(cache))
            except torchslim.RecipeError as exc:  # the channel method needs torch-pruning
                print(f"resnet18 case skipped: {exc}")
    print(rows_table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("search-quick.json" if args.quick else "search.json")
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
