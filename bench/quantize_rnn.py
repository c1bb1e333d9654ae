"""Benchmark of the ``int8`` method on recurrent layers (contrib/torchslim-quantize), CPU, one thread.

Two parts, each timed in one run with the calls interleaved and their order alternated every round
(the second of two back-to-back calls runs warmer), speed given as a ratio to the float baseline of
the same run:

- **layers**: ``nn.GRU``, ``nn.LSTM`` and ``nn.RNN`` (2 layers, 128 -> 256, batch 8 x 100 steps) in
  float, int8 through PyTorch's dynamic int8 kernel (GRU, LSTM) and int8 weight-only. This is what
  the method's defaults follow: GRU ``dynamic``, LSTM and RNN ``weight-only``.
- **model**: a Conv+GRU sequence model (two Conv1d over 40 features, 2-layer GRU 256, Linear head;
  batch 8 x 100 frames) dense in float, ``int8`` with its defaults, pruned 50% (``magnitude``) in
  float, and pruned 50% then ``int8``: speed, the bytes ``torchslim.save`` writes (ratio to the dense
  float file; floor: pruned + int8 at most 0.2x), and the output error against the float model it was
  quantized from. Saved models are loaded back and their outputs compared bit for bit.

Prints a table and writes JSON (bench/results/quantize_rnn.json, or quantize_rnn-quick.json).
``--quick``: shorter inputs, one GRU/LSTM/RNN layer and fewer rounds (the same Conv+GRU model, so the
same file sizes), a few seconds.

    python bench/quantize_rnn.py            # about a minute on 2 CPU cores
    python bench/quantize_rnn.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import write_json  # bench/ is the script's own folder
from tabulate import tabulate
from torch import nn
from torchslim_quantize import Int8GRU, Int8LSTM, Int8RNN, recurrent_kernel

import torchslim
from torchslim.io import saved_size_bytes

RESULTS = Path(__file__).resolve().parent / "results"


class ConvGRU(nn.Module):
    """A speech-style tagger: two Conv1d over feature frames, a 2-layer GRU, a Linear head per frame."""

    def __init__(self, features: int = 40, channels: int = 128, hidden: int = 256, classes: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv1d(features, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.gru = nn.GRU(channels, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: batch x features x frames
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.gru(h.transpose(1, 2))[0])


def interleaved_ms(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms of each call over ``rounds`` rounds; each round runs every call once, order rotated."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # warm-up (packs the int8 kernels' weights)
            calls[n]()
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            if r % 2:
                order.reverse()
            for n in order:
                start = time.perf_counter()
                calls[n]()
                times[n].append(time.perf_counter() - start)
    return {n: 1e3 * statistics.median(t) for n, t in times.items()}


def error(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max absolute error, and the same relative to the reference's largest magnitude."""
    diff = float((out - ref).abs().max())
    return {"max_abs_err": round(diff, 5), "rel_err": round(diff / float(ref.abs().max()), 5)}


# ------------------------------------------------------------------------------------------ layers
def layer_rows(quick: bool, rounds: int) -> list[dict[str, Any]]:
    size, hidden, layers, batch, steps = (128, 256, 1, 4, 20) if quick else (128, 256, 2, 8, 100)
    x = torch.randn(batch, steps, size, generator=torch.Generator().manual_seed(1))
    rows = []
    for float_class, kind, kernels in ((nn.GRU, Int8GRU, ("dynamic", "weight-only")),
                                       (nn.LSTM, Int8LSTM, ("dynamic", "weight-only")),
                                       (nn.RNN, Int8RNN, ("weight-only",))):
        torch.manual_seed(0)
        layer = float_class(size, hidden, num_layers=layers, batch_first=True).eval()
        variants = {"float": layer, **{f"int8 {k}": kind.from_float(layer, kernel=k).eval() for k in kernels}}
        with torch.inference_mode():
            ref = layer(x)[0]
            outs = {n: m(x)[0] for n, m in variants.items()}
        ms = interleaved_ms({n: (lambda m=m: m(x)) for n, m in variants.items()}, rounds)
        default = kind.default_kernel
        for n in variants:
            rows.append({"part": "layer", "model": f"{float_class.__name__}({size}, {hidden}, layers={layers})",
                         "variant": n + (" (default)" if n == f"int8 {default}" else ""), "ms": round(ms[n], 2),
                         "speedup": round(ms["float"] / ms[n], 2), **error(outs[n], ref)})
    return rows


# ------------------------------------------------------------------------------------------ model
def model_rows(quick: bool, rounds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    batch, frames = (2, 20) if quick else (8, 100)  # --quick: the same model (same file sizes), shorter input
    x = torch.randn(batch, 40, frames, generator=torch.Generator().manual_seed(2))
    engine = torchslim.Engine()
    prune = {"compress": {"method": "magnitude", "sparsity": 0.5}}
    int8 = {"compress": {"method": "int8"}}
    results = {name: engine.run(ConvGRU().eval(), {"steps": steps, "evaluate": []}, example_inputs=(x,))
               for name, steps in (("int8", [int8]), ("pruned 50%", [prune]), ("pruned 50% + int8", [prune, int8]))}
    dense = ConvGRU().eval()
    pruned = torchslim.masks.finalize(results["pruned 50%"].model.eval())
    variants = {"dense float": dense, "int8": results["int8"].model.eval(), "pruned 50% float": pruned,
                "pruned 50% + int8": results["pruned 50% + int8"].model.eval()}
    source = {"dense float": "dense float", "int8": "dense float", "pruned 50% float": "pruned 50% float",
              "pruned 50% + int8": "pruned 50% float"}
    with torch.inference_mode():
        outs = {n: m(x) for n, m in variants.items()}
    ms = interleaved_ms({n: (lambda m=m: m(x)) for n, m in variants.items()}, rounds)
    dense_bytes = saved_size_bytes(dense)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quantize-rnn-") as scratch:
        for n, m in variants.items():
            path = torchslim.save(m, Path(scratch) / n.replace(" ", "_").replace("%", "").replace("+", "and"))
            loaded = torchslim.load(path, base_model=ConvGRU().eval()).eval()
            with torch.inference_mode():
                roundtrip = bool(torch.equal(loaded(x), outs[n]))
            size = saved_size_bytes(m)
            rows.append({"part": "model", "model": "Conv+GRU", "variant": n, "ms": round(ms[n], 2),
                         "speedup": round(ms["dense float"] / ms[n], 2), "saved_kB": round(size / 1e3, 1),
                         "size_ratio": round(size / dense_bytes, 3), **error(outs[n], outs[source[n]]),
                         "vs": source[n], "rel_err_vs_dense": error(outs[n], outs["dense float"])["rel_err"],
                         "load_equal": roundtrip})
    quantized = results["pruned 50% + int8"].steps[-1]
    report = {"int8_layers": [{k: r[k] for k in ("layer", "type", "int8", "compute")} for r in quantized.report]}
    return rows, report


def run(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 21
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers = layer_rows(quick, rounds)
        models, report = model_rows(quick, rounds)
    finally:
        torch.set_num_threads(previous)
    floor = next(r for r in models if r["variant"] == "pruned 50% + int8")["size_ratio"]
    return {"quick": quick, "rounds": rounds, "threads": 1, "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine, "recurrent_kernel": recurrent_kernel(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "floor": {"pruned_int8_size_ratio": floor, "max": 0.2, "met": floor <= 0.2},
            "rows": layers + models, **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds: finishes in seconds")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/quantize_rnn[-quick].json)")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(f"## int8 recurrent layers: torch {results['torch']} ({results['quantized_engine']}), 1 thread, "
          f"{results['rounds']} interleaved rounds, load average {results['load_average'][0]}")
    layer_cols = ["model", "variant", "ms", "speedup", "max_abs_err", "rel_err"]
    print(tabulate([[r.get(c, "") for c in layer_cols] for r in results["rows"] if r["part"] == "layer"],
                   headers=layer_cols))
    print()
    model_cols = ["model", "variant", "ms", "speedup", "saved_kB", "size_ratio", "rel_err", "vs", "rel_err_vs_dense",
                  "load_equal"]
    print(tabulate([[r.get(c, "") for c in model_cols] for r in results["rows"] if r["part"] == "model"],
                   headers=model_cols))
    floor = results["floor"]
    print(f"\npruned 50% + int8 saved at {floor['pruned_int8_size_ratio']}x of the dense float file "
          f"(floor: at most {floor['max']}x): {'met' if floor['met'] else 'NOT met'}")
    for row in results["int8_layers"]:
        print(f"  {row['layer']} ({row['type']}): {row['int8']} - {row['compute']}")
    out = args.out or RESULTS / ("quantize_rnn-quick.json" if args.quick else "quantize_rnn.json")
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
