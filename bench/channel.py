"""Benchmark of the built-in ``channel`` pruning: real speedups, beside Torch-Pruning itself and ``svd``.

Sections (both by default; pick one with a flag):

--speed   ResNet-18/50-shaped models (torchslim.zoo, 224x224, 1000 classes), batch 1 and 8, 2 threads:
          MACs, parameters, latency speedup and realized/ideal speedup (ideal = MAC reduction) at channel
          ratios 0.3 and 0.5, for torchslim ``channel``, Torch-Pruning used directly with the same settings
          (BasePruner, group L2 importance, conv1 and fc ignored), and ``svd`` at the MAC ratio that
          ``channel`` reached (svd's latency guard off, so that it reaches those MACs). Each round times
          every variant once, in a rotating order (the machine is shared); a speedup is the median over
          rounds of baseline time / variant time, and "best-of" the ratio of the fastest runs.
--digits  Digits CNN (sklearn digits): test accuracy at 50% of the MACs, right after compression and after
          the same sgd fine-tuning, for ``channel`` (mac_ratio 0.5), ``svd`` (mac_ratio 0.5) and ``magnitude``
          (the sparsity that leaves as many non-zero weights as ``channel`` keeps; its dense MACs do not drop).

``--quick`` shrinks everything to finish in seconds. Prints one table per section and writes JSON
(default bench/results/channel.json; channel-quick.json with --quick).

    python bench/channel.py            # everything, ~30 min on 2 shared CPU cores
    python bench/channel.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tabulate import tabulate
from torch import nn

import torchslim
from torchslim.demo import digits_loaders
from torchslim.measure import count_macs, count_nonzeros, count_params, measure_latency
from torchslim.zoo import DigitsCNN, resnet18, resnet50

from common import bench_threads  # bench/ is the script's own folder

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = bench_threads(2)


def svd_at(mac_ratio: float) -> dict[str, Any]:
    """The svd step at a MAC ratio; without its latency guard, which keeps slow factors out and so
    would stop it from reaching the same MACs as channel pruning."""
    return {"method": "svd", "mac_ratio": round(mac_ratio, 4), "measure_latency": False}


def show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}\n")
    print(tabulate(rows, headers="keys", floatfmt=".3f") if rows else "(no rows)")
    sys.stdout.flush()


def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter's name and shape: two models with equal lists have the same architecture."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def torch_pruning_direct(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    """Torch-Pruning used as its README shows, with the settings ``channel`` uses by default."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    pruner = tp.pruner.BasePruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=[model.conv1, model.fc],
    )
    pruner.step()
    return model


def interleaved_latency(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, warmup: int) -> dict[str, Any]:
    """Time every model once per round, in a rotating order, so that load changes hit all alike.

    Returns per model the median ms, and two speedups: the median over rounds of baseline_ms / model_ms
    (each ratio from runs seconds apart) and the ratio of the best (minimum) times.
    """
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    for model in models.values():
        measure_latency(model, (x,), runs=1, warmup=warmup, threads=THREADS)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            times[name].append(measure_latency(models[name], (x,), runs=1, warmup=0, threads=THREADS))
    base = times["baseline"]
    return {
        name: {"ms": statistics.median(t), "best_ms": min(t),
               "speedup": statistics.median(b / v for b, v in zip(base, t)),
               "speedup_best": min(base) / min(t)}
        for name, t in times.items()
    }


# ------------------------------------------------------------------------------------------ speed

def bench_speed(quick: bool) -> dict[str, Any]:
    cfg = {
        "models": ["resnet18"] if quick else ["resnet18", "resnet50"],
        "width": 8 if quick else 64,
        "resolution": 32 if quick else 224,
        "classes": 10 if quick else 1000,
        "ratios": [0.5] if quick else [0.3, 0.5],
        "batches": [1, 8],
        "rounds": 2 if quick else 12,
        "warmup": 0 if quick else 2,
        "threads": THREADS,
    }
    builders: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet50": resnet50}
    engine = torchslim.Engine()
    has_svd = "svd" in engine.methods("accelerate")
    rows, raw = [], []
    for name in cfg["models"]:
        torch.manual_seed(0)
        base = builders[name](classes=cfg["classes"], width=cfg["width"]).eval()
        x1 = torch.randn(1, 3, cfg["resolution"], cfg["resolution"])
        base_macs, base_params = count_macs(base, (x1,)), count_params(base)
        for ratio in cfg["ratios"]:
            start = time.perf_counter()
            ours = engine.run(base, {"steps": [{"accelerate": {"method": "channel", "ratio": ratio}}],
                                     "evaluate": []}, example_inputs=(x1,))
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            direct = torch_pruning_direct(base, x1, ratio)
            direct_s = time.perf_counter() - start
            variants = {"baseline": base, "channel": ours.model.eval(), "torch-pruning": direct}
            mac_ratio = count_macs(ours.model, (x1,)) / base_macs
            svd_info: dict[str, Any] = {}
            if has_svd:
                start = time.perf_counter()
                svd = engine.run(base, {"steps": [{"accelerate": svd_at(mac_ratio)}], "evaluate": []},
                                 example_inputs=(x1,))
                svd_info["seconds"] = time.perf_counter() - start
                variants["svd"] = svd.model.eval()
            same = shapes(ours.model) == shapes(direct)
            macs = {variant: count_macs(model, (x1,)) for variant, model in variants.items()}
            for batch in cfg["batches"]:
                x = torch.randn(batch, 3, cfg["resolution"], cfg["resolution"])
                timing = interleaved_latency(variants, x, cfg["rounds"], cfg["warmup"])
                for variant, model in variants.items():
                    if variant == "baseline":
                        continue
                    ideal = base_macs / macs[variant]
                    row = {
                        "model": name, "ratio": ratio, "batch": batch, "method": variant,
                        "MACs": f"{macs[variant] / 1e6:.1f}M", "MAC x": ideal,
                        "params": f"{count_params(model) / 1e6:.2f}M",
                        "base ms": timing["baseline"]["ms"], "ms": timing[variant]["ms"],
                        "speedup": timing[variant]["speedup"], "realized/ideal": timing[variant]["speedup"] / ideal,
                        "best-of speedup": timing[variant]["speedup_best"],
                    }
                    rows.append(row)
                    raw.append({**row, "macs": macs[variant], "params_n": count_params(model), "base_macs": base_macs,
                                "base_params": base_params,
                                "prune_seconds": {"channel": ours_s, "torch-pruning": direct_s}.get(
                                    variant, svd_info.get("seconds")),
                                "same_architecture_as_torch_pruning": same if variant == "channel" else None})
                print(f"  {name} ratio {ratio} batch {batch}: " + ", ".join(
                    f"{r['method']} {r['speedup']:.2f}x" for r in rows[-(len(variants) - 1):]), flush=True)
    show(f"speed: {THREADS} threads; speedup = median over {cfg['rounds']} interleaved rounds of base/variant "
         f"(best-of: ratio of the fastest runs)", rows)
    checks = [r["same_architecture_as_torch_pruning"] for r in raw if r["method"] == "channel"]
    print(f"\nchannel gives the same architecture as Torch-Pruning used directly: {all(checks)}")
    return {"config": {**cfg, "svd": has_svd}, "rows": rows, "runs": raw,
            "same_architecture_as_torch_pruning": all(checks)}


# ------------------------------------------------------------------------------------------ digits

def accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 accuracy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def bench_digits(quick: bool, seeds: list[int]) -> dict[str, Any]:
    cfg = {
        "width": 8 if quick else 32,
        "dense_epochs": 1 if quick else 20,
        "finetune_epochs": 1 if quick else 5,
        "lr": 0.05,
        "finetune_lr": 0.01,
        "mac_ratio": 0.5,
        "max_batches_per_epoch": 4 if quick else None,
    }
    limits = {"max_batches_per_epoch": cfg["max_batches_per_epoch"]} if cfg["max_batches_per_epoch"] else {}
    train, test = digits_loaders(batch_size=64, seed=0)
    x1 = next(iter(test))[0][:1]
    engine = torchslim.Engine()
    available = set(engine.methods("accelerate")) | set(engine.methods("compress"))
    finetune = {"finetune": {"method": "sgd", "epochs": cfg["finetune_epochs"], "lr": cfg["finetune_lr"], **limits}}
    raw = []
    for seed in seeds:
        torch.manual_seed(seed)
        dense = engine.run(DigitsCNN(width=cfg["width"]), {"steps": [{"finetune": {
            "method": "sgd", "epochs": cfg["dense_epochs"], "lr": cfg["lr"], **limits}}], "evaluate": []},
            train_data=train, seed=seed).model.eval()
        dense_macs, dense_nonzeros = count_macs(dense, (x1,)), count_nonzeros(dense)
        raw.append({"seed": seed, "method": "dense", "macs": dense_macs, "nonzeros": dense_nonzeros,
                    "compressed": accuracy(dense, test), "finetuned": accuracy(dense, test)})
        steps = {"channel": {"accelerate": {"method": "channel", "mac_ratio": cfg["mac_ratio"]}}}
        if "svd" in available:
            steps["svd"] = {"accelerate": svd_at(cfg["mac_ratio"])}
        kept = None
        for method, step in list(steps.items()) + [("magnitude", None)]:
            if method == "magnitude":
                if "magnitude" not in available or kept is None:
                    continue
                # the same number of non-zero weights as the channel-pruned model keeps
                sparsity = round(1 - kept / dense_nonzeros, 4)
                step = {"compress": {"method": "magnitude", "sparsity": sparsity, "scope": "global"}}
            compressed = engine.run(dense, {"steps": [step], "evaluate": []}, train_data=train,
                                    example_inputs=(x1,), seed=seed).model
            tuned = engine.run(compressed, {"steps": [finetune], "evaluate": []}, train_data=train, seed=seed).model
            if method == "channel":
                kept = count_nonzeros(compressed)
            raw.append({"seed": seed, "method": method, "macs": count_macs(compressed, (x1,)),
                        "nonzeros": count_nonzeros(compressed), "compressed": accuracy(compressed, test),
                        "finetuned": accuracy(tuned, test)})
        print(f"  seed {seed}: " + ", ".join(f"{r['method']} {r['compressed']:.3f}->{r['finetuned']:.3f}"
                                             for r in raw if r["seed"] == seed), flush=True)
    rows = []
    for method in dict.fromkeys(r["method"] for r in raw):
        mine = [r for r in raw if r["method"] == method]
        dense = [r for r in raw if r["method"] == "dense"]
        rows.append({
            "method": method,
            "MACs / dense": statistics.mean(r["macs"] / d["macs"] for r, d in zip(mine, dense)),
            "non-zeros / dense": statistics.mean(r["nonzeros"] / d["nonzeros"] for r, d in zip(mine, dense)),
            "acc compressed": statistics.mean(r["compressed"] for r in mine),
            "acc fine-tuned": statistics.mean(r["finetuned"] for r in mine),
        })
    show(f"digits CNN at {cfg['mac_ratio']:.0%} MACs: test accuracy, mean of {len(seeds)} seed(s), "
         f"{cfg['finetune_epochs']} fine-tune epoch(s)", rows)
    return {"config": {**cfg, "seeds": seeds}, "rows": rows, "runs": raw}


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in seconds")
    parser.add_argument("--speed", action="store_true", help="run the speed section")
    parser.add_argument("--digits", action="store_true", help="run the digits section")
    parser.add_argument("--seeds", type=int, default=None, help="digits: number of seeds (default 3; 1 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    args = parser.parse_args(argv)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("bench/channel.py needs Torch-Pruning: pip install 'torchslim[prune]'", file=sys.stderr)
        return 2
    torch.set_num_threads(THREADS)
    sections = [s for s in ("speed", "digits") if getattr(args, s)] or ["speed", "digits"]
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    out: dict[str, Any] = {
        "quick": args.quick, "threads": THREADS, "torch": torch.__version__,
        "torch_pruning": __import__("torch_pruning").__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    }
    start = time.perf_counter()
    if "speed" in sections:
        out["speed"] = bench_speed(args.quick)
    if "digits" in sections:
        out["digits"] = bench_digits(args.quick, seeds)
    out["seconds"] = time.perf_counter() - start
    path = args.json or RESULTS / ("channel-quick.json" if args.quick else "channel.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {path} ({out['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
