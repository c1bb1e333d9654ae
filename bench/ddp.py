"""Fine-tuning throughput of the ``sgd`` method: one process vs ``torchrun --nproc-per-node 2`` (gloo, CPU).

Every row runs the same recipe through ``torchslim.Engine().run`` on the digits data: magnitude pruning
to 80 % (so the DDP path trains parametrized, masked layers), then ``sgd`` fine-tuning with a global
batch of 64. The time is the fine-tuning step's wall time as the engine records it (the slowest rank),
so it includes what DDP costs besides the training loop: sharding the loader, wrapping the model,
averaging BatchNorm statistics and checking that the ranks agree. ``samples/s`` is training samples
of the whole global batch per second.

Rows: 1 process with 1 thread, 1 process with 2 threads (what plain ``python`` does on a 2-core
machine), both run inside this script; 2 processes with 1 thread each (``torchrun``; one core per rank).

    python bench/ddp.py            # width 32 (4 epochs) and 128 (1 epoch), 3 rounds, median reported
    python bench/ddp.py --quick    # width 8, 10 steps, 1 vs 2 processes only (seconds)

Prints a table and writes JSON (default ``bench/results/ddp.json``; ``ddp-quick.json`` with --quick).
The machine's load average is recorded: on a shared machine other work skews every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GLOBAL_BATCH = 64


def worker(args: argparse.Namespace) -> int:
    """One process (or one torchrun rank): run the recipe, write this rank's timing to ``--result``."""
    import torch

    import torchslim
    from torchslim import distributed
    from torchslim.demo import digits_loaders
    from torchslim.zoo import DigitsCNN

    torch.set_num_threads(args.threads)
    # The first optimizer a process builds imports torch._dynamo (seconds of CPU); do it before timing.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch.manual_seed(0)
    train, test = digits_loaders(batch_size=GLOBAL_BATCH)
    length = {"steps": args.steps} if args.steps else {"epochs": args.epochs}
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.8}},
                        {"finetune": {"method": "sgd", "lr": 0.05, **length}}],
              "evaluate": ["accuracy"]}
    result = torchslim.Engine().run(DigitsCNN(width=args.width), recipe, train_data=train, eval_data=test)
    step = result.steps[-1]
    seconds = [step.seconds]
    if distributed.is_distributed():
        import torch.distributed as dist

        seconds = [0.0] * distributed.world_size()
        dist.all_gather_object(seconds, step.seconds)
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({
            "seconds": max(seconds),
            "samples": args.steps * GLOBAL_BATCH if args.steps else args.epochs * len(train.dataset),
            "steps": step.info["steps"], "epochs": round(step.info["epochs"], 3), "accuracy": result.final["accuracy"],
            "processes": distributed.world_size(), "threads": args.threads,
        }))
    return 0


def run_row(processes: int, threads: int, width: int, epochs: int, steps: int | None = None) -> dict:
    """Run one configuration (one process: here; several: under torchrun) and return its row."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        start = time.perf_counter()
        if processes == 1:
            worker(argparse.Namespace(threads=threads, width=width, epochs=epochs, steps=steps, result=str(result)))
            return _row(result, width, time.perf_counter() - start)
        command = [__file__, "--worker", "--threads", str(threads), "--width", str(width),
                   "--epochs", str(epochs), "--result", str(result), *(["--steps", str(steps)] if steps else [])]
        torchrun = Path(sys.executable).with_name("torchrun")
        launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
        command = [*launcher, "--standalone", "--nproc-per-node", str(processes), *command]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return _row(result, width, wall)


def _row(result: Path, width: int, wall: float) -> dict:
    row = json.loads(result.read_text())
    row.update(width=width, samples_per_s=row["samples"] / row["seconds"], launch_wall_s=wall)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 8, 10 steps, 1 vs 2 processes")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all configurations (median reported)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    if args.quick:
        configs, repeats = [(1, 1, 8, 1, 10), (2, 1, 8, 1, 10)], 1
    else:
        configs = [(p, t, w, e, None) for w, e in ((32, 4), (128, 1)) for p, t in ((1, 1), (1, 2), (2, 1))]
        repeats = args.repeats
    load_before = os.getloadavg()
    runs: list[dict] = []
    # Rounds of every configuration, one after the other, so a change in the machine's load hits all
    # of them alike; each row reports the median round.
    for round_ in range(repeats):
        for processes, threads, width, epochs, steps in configs:
            run = run_row(processes, threads, width, epochs, steps)
            run.update(round=round_, load_average=os.getloadavg()[0])
            runs.append(run)
            print(f"  round {round_ + 1}: {processes} process(es) x {threads} thread(s), width {width}: "
                  f"{run['samples_per_s']:.0f} samples/s (load {run['load_average']:.1f})", file=sys.stderr)
    rows = []
    for processes, threads, width, _, _ in configs:
        mine = sorted((r for r in runs if (r["processes"], r["threads"], r["width"]) == (processes, threads, width)),
                      key=lambda r: r["samples_per_s"])
        row = dict(mine[len(mine) // 2])
        row["all_samples_per_s"] = [round(r["samples_per_s"], 1) for r in mine]
        rows.append(row)
    for row in rows:
        base = next(r for r in rows if r["width"] == row["width"] and r["processes"] == 1 and r["threads"] == 1)
        row["speedup_vs_1x1"] = row["samples_per_s"] / base["samples_per_s"]

    from tabulate import tabulate

    headers = ["width", "processes", "threads/process", "epochs", "steps", "fine-tune s", "samples/s",
               "speed-up vs 1x1", "samples/s of every round", "accuracy"]
    table = [[r["width"], r["processes"], r["threads"], r["epochs"], r["steps"], f"{r['seconds']:.2f}",
              f"{r['samples_per_s']:.0f}", f"{r['speedup_vs_1x1']:.2f}",
              ", ".join(f"{v:.0f}" for v in r["all_samples_per_s"]), f"{r['accuracy']:.3f}"] for r in rows]
    print(tabulate(table, headers=headers, tablefmt="github"))
    load_after = os.getloadavg()
    print(f"\nload average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} CPUs")

    import torch

    out = args.json or RESULTS / ("ddp-quick.json" if args.quick else "ddp.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rows": rows, "runs": runs, "repeats": repeats, "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "global_batch": GLOBAL_BATCH, "backend": "gloo",
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
