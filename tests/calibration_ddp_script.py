"""Calibration statistics under torchrun (gloo, CPU), or in one process: run by tests/test_calibration_ddp.py.

A tiny BERT (random weights, fixed seed) on 6 keyword batches with padding. Each rank takes its share of
the batches (:func:`torchslim.calibration.calibration_share`), sums the input statistics of every
encoder Linear (squared input norms, float64 Gram matrices, token counts) and all-reduces them
(``sum_stats``); then ``magnitude`` (activation criterion, reconstruction, sequential by blocks) runs
through ``Engine.run`` on the same batches. Writes ``<out>/stats-rank<r>.safetensors`` and
``<out>/pruned-rank<r>.safetensors`` (``single`` instead of ``rank<r>`` outside torchrun).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

import torchslim
from torchslim import distributed, masks
from torchslim.calibration import calibration_share
from torchslim.plugins.magnitude.calibration import collect_input_stats, sum_stats


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(6):
        ids = torch.randint(0, 120, (4, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # padding rows must never enter a statistic
        mask[3, 4:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def main(out: Path) -> None:
    tag = f"rank{distributed.rank()}" if distributed.is_distributed() else "single"
    bert = model()
    linears = [m for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear)]
    names = [n for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear)]
    share, sharded = calibration_share(batches())
    stats, _ = collect_input_stats(bert, linears, share, gram=True)
    if sharded:
        sum_stats(stats, linears)
    flat = {}
    for name, module in zip(names, linears):
        entry = stats[id(module)]
        flat[f"{name}.sumsq"], flat[f"{name}.gram"] = entry.sumsq, entry.gram
        flat[f"{name}.rows"] = torch.tensor([entry.rows])
    save_file(flat, str(out / f"stats-{tag}.safetensors"))
    step = {"compress": {"method": "magnitude", "sparsity": 0.5, "criterion": "activation", "reconstruct": True,
                         "scope": "row", "calibration_batches": 6}}
    result = torchslim.Engine().run(bert, {"steps": [step], "evaluate": []}, train_data=batches(),
                                    example_inputs=batches()[0])
    pruned = masks.finalize(result.model)
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(out / f"pruned-{tag}.safetensors"))
    info = result.steps[0].info
    (out / f"info-{tag}.txt").write_text(str(sharded) + "\n" + str(info.get("sparsity")))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
