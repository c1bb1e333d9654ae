"""Peak memory of compressing a ResNet-50-shaped model, against its float32 size (floor: under 3x).

Each case runs in a fresh Python subprocess, so nothing earlier inflates its peak. The child imports
torch and torchslim, discovers the plugins and makes the example input; that resident set size is
the *interpreter baseline* (after a warm-up run of the case on a tiny model, so that lazily imported
code is part of it). It then resets the kernel's high-water mark (``/proc/self/clear_refs``),
builds the model and runs the case through ``torchslim.Engine().run`` (no evaluators: compression
only). ``VmHWM - baseline`` is the peak the case costs, including the model itself; the table gives
it as a multiple of the model's float32 size (parameters x 4 bytes), and also without the model's
own resident size (for readers who count the loaded model as part of the baseline).

Cases:

- ``model``: build the model only (the 1x every case starts from);
- ``engine``: ``Engine.run`` with no steps: what the engine adds by copying the model (a working
  copy; the frozen ``original`` for teachers/calibration is copied only when a plugin asks for it);
- ``magnitude``: ``{method: magnitude, sparsity: 0.8, scope: global}``;
- ``svd``: ``{method: svd, mac_ratio: 0.5}`` (``measure_latency: false``: timing changes which
  layers are kept, not the memory the decomposition needs).

For the compression cases the step's own peak above its start (the engine's instrument wrapper,
``StepRecord.peak_memory_mb``) is reported too, so the table shows where the memory goes: model,
engine copies, step work.

    python bench/memory.py             # ResNet-50 (25.6M parameters) on a 1x3x224x224 input, ~1 min
    python bench/memory.py --quick     # a quarter-width ResNet-50 on 1x3x64x64, seconds

Writes bench/results/memory.json (memory-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = 3.0
CASES = {
    "model": None,
    "engine": [],
    "magnitude": [{"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}}],
    "svd": [{"accelerate": {"method": "svd", "mac_ratio": 0.5, "measure_latency": False}}],
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")


def child(case: str, width: int, size: int, threads: int) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its memory figures in MiB."""
    import gc

    import torch

    import torchslim
    from torchslim.memory import reset_peak_memory
    from torchslim.zoo import resnet50

    torch.set_num_threads(threads)
    engine = torchslim.Engine()  # plugin discovery imports happen before the baseline
    x = torch.randn(1, 3, size, size)
    if CASES[case] is not None:
        # warm-up on a tiny model: lazily imported code (the FLOP counter pulls in sympy) and kernels'
        # one-off workspaces belong to the interpreter baseline, not to the cost of compressing
        engine.run(resnet50(width=2, classes=10), {"steps": CASES[case], "evaluate": []},
                   example_inputs=(torch.randn(1, 3, 32, 32),))
    gc.collect()
    reset_peak_memory()
    baseline = _status_kib("VmRSS")
    torch.manual_seed(0)
    model = resnet50(width=width).eval()
    model_bytes = 4 * sum(p.numel() for p in model.parameters())
    after_model = _status_kib("VmRSS")
    step_peak = None
    if CASES[case] is not None:
        result = engine.run(model, {"steps": CASES[case], "evaluate": []}, example_inputs=(x,))
        if result.steps:
            step_peak = result.steps[0].peak_memory_mb
    peak = _status_kib("VmHWM")
    mib = 1024
    return {
        "case": case, "params": model_bytes // 4, "model_mb": model_bytes / 2**20,
        "baseline_mb": baseline / mib, "model_rss_mb": (after_model - baseline) / mib,
        "peak_above_baseline_mb": (peak - baseline) / mib, "step_peak_mb": step_peak,
    }


def run_cases(width: int, size: int, threads: int) -> dict[str, dict[str, Any]]:
    """Run every case, each in its own fresh subprocess (concurrently: peaks are per process)."""
    procs = {
        case: subprocess.Popen([sys.executable, __file__, "--child", case, "--width", str(width), "--size",
                                str(size), "--threads", str(threads)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for case in CASES
    }
    rows = {}
    for case, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"case {case} failed:\n{err[-3000:]}")
        row = json.loads(out.strip().splitlines()[-1])
        row["ratio"] = row["peak_above_baseline_mb"] / row["model_mb"]
        row["ratio_above_model"] = (row["peak_above_baseline_mb"] - row["model_rss_mb"]) / row["model_mb"]
        row["within_floor"] = row["ratio"] < FLOOR
        rows[case] = row
    return rows


def explain(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Where the memory goes, in multiples of the model's float32 size."""
    model = rows["model"]["model_mb"]
    x = lambda mb: f"{mb / model:.2f}x"  # noqa: E731
    lines = [f"model built: {x(rows['model']['peak_above_baseline_mb'])} (parameters, BN buffers, allocator)"]
    copies = rows["engine"]["peak_above_baseline_mb"] - rows["model"]["peak_above_baseline_mb"]
    lines.append(f"engine copies (the working model; the original is copied on demand): +{x(copies)}")
    for case in ("magnitude", "svd"):
        row = rows[case]
        over = row["peak_above_baseline_mb"] - rows["engine"]["peak_above_baseline_mb"]
        verdict = "within" if row["within_floor"] else "OVER"
        lines.append(f"{case}: total {x(row['peak_above_baseline_mb'])} ({verdict} the {FLOOR:g}x floor); "
                     f"step work beyond the engine's copies +{x(max(over, 0.0))}, step peak above its start "
                     f"{x(row['step_peak_mb'] or 0.0)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quarter-width model, small input (seconds)")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=None, help="stem width (64 = ResNet-50)")
    parser.add_argument("--size", type=int, default=None, help="input height and width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each case")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    width = args.width or (16 if args.quick else 64)
    size = args.size or (64 if args.quick else 224)
    if args.child:
        print(json.dumps(child(args.child, width, size, args.threads)))
        return 0

    from tabulate import tabulate

    rows = run_cases(width, size, args.threads)
    table = [[r["case"], f"{r['model_mb']:.1f}", f"{r['peak_above_baseline_mb']:.1f}", f"{r['ratio']:.2f}x",
              f"{r['ratio_above_model']:.2f}x", "-" if r["step_peak_mb"] is None else f"{r['step_peak_mb']:.1f}",
              "yes" if r["within_floor"] else "NO"]
             for r in rows.values()]
    print(f"ResNet-50-shaped model, width {width} ({rows['model']['params']:,} parameters), input 1x3x{size}x{size}, "
          f"baseline RSS {rows['model']['baseline_mb']:.0f} MiB")
    print(tabulate(table, headers=["case", "model MiB (fp32)", "peak above baseline MiB", "x model",
                                   "x model, model excluded", "step peak MiB", f"< {FLOOR:g}x"],
                   disable_numparse=True))
    notes = explain(rows)
    print("\n" + "\n".join(notes))
    out = args.out or RESULTS / ("memory-quick.json" if args.quick else "memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "floor": FLOOR, "width": width, "input": [1, 3, size, size], "threads": args.threads,
        "python": platform.python_version(), "machine": platform.machine(),
        "cases": rows, "explanation": notes,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
