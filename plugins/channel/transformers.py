"""Structured pruning of transformer blocks: whole attention heads and MLP units, by direct slicing.

For each block :func:`torchslim.hf.blocks.find_blocks` recognises (BERT, GPT-2, ViT, Llama-style), the
MLP width loses ``ratio`` of its units (the rows of ``fc1``/``gate``+``up`` and the matching columns of
``fc2``/``down``) and the attention loses ``head_ratio`` of its heads (the q/k/v rows and o columns of
each head; under grouped-query attention whole key/value groups, each with its query heads, so the
group size stays). Units are ranked by the norm of everything they own (l1/l2) or ``|w * grad|``
(taylor), summed over the coupled layers. The hidden size is never changed, so embeddings, norms,
residuals and heads outside the blocks stay as they are. Deterministic and free of tracing, so it
cannot hang on a model a tracer does not understand.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from torchslim.errors import ModelError
from torchslim.hf.blocks import Block, find_blocks, head_counts, out_features, sync_attributes
from torchslim.hf.config import update_config
from torchslim.recipe import Targets
from torchslim.targets import HFConv1D, is_transposed_linear, select_modules

from .graph import Outcome, accumulate_gradients

#: Layer types a recipe's targets select in transformer blocks when it names none.
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, HFConv1D)


def _part(weight: torch.Tensor, how: str) -> torch.Tensor:
    if how == "l1":
        return weight.detach().abs()
    if how == "l2":
        return weight.detach().pow(2)
    grad = weight.grad
    return torch.zeros_like(weight) if grad is None else (weight.detach() * grad).abs()


def _unit_scores(layer: nn.Module, side: str, how: str) -> torch.Tensor:
    """Per-unit score of ``layer``'s outputs (``side='out'``) or inputs (``'in'``), weight and bias."""
    weight = _part(layer.weight, how).float()
    out_dim = 1 if is_transposed_linear(layer) else 0
    dim = out_dim if side == "out" else 1 - out_dim
    score = weight.sum(dim=1 - dim)
    if side == "out" and getattr(layer, "bias", None) is not None:
        score = score + _part(layer.bias, how).float()
    return score


def _keep_rows(layer: nn.Module, keep: torch.Tensor, side: str) -> None:
    """Keep only the ``keep`` output (``side='out'``) or input units of a Linear / HF Conv1D, in place."""
    out_dim = 1 if is_transposed_linear(layer) else 0
    dim = out_dim if side == "out" else 1 - out_dim
    keep = keep.to(layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.detach().index_select(dim, keep).clone(),
                                requires_grad=layer.weight.requires_grad)
    if side == "out" and getattr(layer, "bias", None) is not None:
        layer.bias = nn.Parameter(layer.bias.detach().index_select(0, keep).clone(),
                                  requires_grad=layer.bias.requires_grad)


def _kept(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` best units, in their original order (ties broken by position)."""
    order = torch.argsort(scores, descending=True, stable=True)[:count]
    return torch.sort(order).values


def _target_count(total: int, ratio: float, round_to: int | None, minimum: int = 1) -> int:
    keep = total - int(total * ratio)
    if round_to and round_to > 1:
        keep = max(keep - keep % round_to, min(round_to, total))
    return max(minimum, min(total, keep))


def _prune_mlp(model: nn.Module, block: Block, keep_count: int, how: str) -> None:
    ins = [model.get_submodule(n) for n in block.mlp_in]
    out = model.get_submodule(block.mlp_out)
    if keep_count >= out_features(ins[0]):
        return
    scores = sum(_unit_scores(layer, "out", how) for layer in ins) + _unit_scores(out, "in", how)
    keep = _kept(scores, keep_count)
    for layer in ins:
        _keep_rows(layer, keep, "out")
    _keep_rows(out, keep, "in")


def _head_units(scores: torch.Tensor, heads: int) -> torch.Tensor:
    return scores.reshape(heads, -1).sum(dim=1)


def _prune_heads(model: nn.Module, block: Block, keep_groups: int, how: str) -> None:
    heads, kv_heads = head_counts(model, block)
    if keep_groups >= kv_heads:
        return
    d = block.head_dim
    o = model.get_submodule(block.o)
    o_scores = _head_units(_unit_scores(o, "in", how), heads)
    if block.layout == "gpt2":
        fused = model.get_submodule(block.q)
        qkv = _unit_scores(fused, "out", how).reshape(3, heads, d).sum(dim=(0, 2))
        keep = _kept(qkv + o_scores, keep_groups)
        cols = (keep[:, None] * d + torch.arange(d)).flatten()
        _keep_rows(fused, torch.cat([cols + i * heads * d for i in range(3)]), "out")
        _keep_rows(o, cols, "in")
    else:
        group = heads // kv_heads
        q, k, v = (model.get_submodule(n) for n in (block.q, block.k, block.v))
        q_scores = _head_units(_unit_scores(q, "out", how), heads) + o_scores
        kv = _head_units(_unit_scores(k, "out", how), kv_heads) + _head_units(_unit_scores(v, "out", how), kv_heads)
        keep = _kept(q_scores.reshape(kv_heads, group).sum(dim=1) + kv, keep_groups)
        kv_cols = (keep[:, None] * d + torch.arange(d)).flatten()
        q_heads = (keep[:, None] * group + torch.arange(group)).flatten()
        q_cols = (q_heads[:, None] * d + torch.arange(d)).flatten()
        _keep_rows(k, kv_cols, "out")
        _keep_rows(v, kv_cols, "out")
        _keep_rows(q, q_cols, "out")
        _keep_rows(o, q_cols, "in")
    sync_attributes(model, block)


def _block_ratio(block: Block, overrides: dict[str, float], default: float) -> float:
    for pattern, ratio in overrides.items():
        if fnmatchcase(block.name, pattern) or any(fnmatchcase(n, pattern) for n in block.layers()):
            return ratio
    return default


def prune_blocks(model: nn.Module, blocks: list[Block], ratio: float, opts: Any, targets: Targets | None,
                 context: Any, where: str, *, finetune_between: dict | None = None) -> Outcome:
    """Remove MLP units and attention heads of ``blocks`` in place; return what was kept and why."""
    if opts.importance == "bn_scale":
        raise ModelError(f"{where}: importance 'bn_scale' ranks channels by a following BatchNorm, and transformer "
                         f"blocks ({blocks[0].name}, ...) have none; use importance l1, l2 or taylor")
    if opts.scope == "global":
        raise ModelError(f"{where}: scope 'global' is not available for transformer blocks ({blocks[0].name}, ...): "
                         f"every block keeps the same widths so the config can say them; use scope 'uniform', "
                         f"and 'overrides' for per-block ratios")
    head_ratio = ratio if opts.head_ratio is None else opts.head_ratio
    selected = {n for n, _ in select_modules(model, targets, LAYER_TYPES)}
    ignored = {n for n, _ in model.named_modules() if any(fnmatchcase(n, p) for p in opts.ignore)}
    outcome = Outcome(engine="transformer-blocks")
    start = {b.name: (out_features(model.get_submodule(b.mlp_in[0])), head_counts(model, b)[1]) for b in blocks}
    for step in range(1, opts.iterative_steps + 1):
        if opts.importance == "taylor":
            accumulate_gradients(model, context, opts.calibration_batches, where)
        fraction = step / opts.iterative_steps
        for block in blocks:
            width, groups = start[block.name]
            mlp = [block.mlp_out, *block.mlp_in]
            attn = block.layers()[:4 if block.layout != "gpt2" else 2]
            block_ratio = _block_ratio(block, opts.overrides, ratio)
            block_heads = _block_ratio(block, opts.overrides, head_ratio)
            if all(n in selected and n not in ignored for n in mlp):
                _prune_mlp(model, block, _target_count(width, block_ratio * fraction, opts.round_to), opts.importance)
            elif step == 1:
                outcome.skipped.append((f"{block.name} (MLP)", "not selected by targets, or ignored"))
            if all(n in selected and n not in ignored for n in attn):
                _prune_heads(model, block, _target_count(groups, block_heads * fraction, None), opts.importance)
            elif step == 1:
                outcome.skipped.append((f"{block.name} (attention)", "not selected by targets, or ignored"))
            outcome.groups += 1
        if finetune_between is not None and step < opts.iterative_steps:
            result = context.run_step(model, {"finetune": dict(finetune_between)})
            if result.model is not model:
                raise ModelError(f"{where}: finetune_between method {finetune_between.get('method')!r} returned a "
                                 f"new model object; iterative pruning needs it to train the model in place")
    model.zero_grad(set_to_none=True)
    for block in blocks:
        sync_attributes(model, block)
    outcome.warnings += update_config(model, blocks)
    return outcome


def transformer_blocks(model: nn.Module, where: str, ignore: list[str] = ()) -> list[Block]:
    """The recognised blocks, or ``[]`` for a model without transformers attention; an attention module
    of an unknown layout is an error naming it."""
    from torchslim.hf.blocks import unrecognised_attention

    blocks = find_blocks(model)
    for name, module in unrecognised_attention(model, blocks):
        if any(fnmatchcase(name, pattern) for pattern in ignore):
            continue
        raise ModelError(
            f"{where}: {type(module).__name__} {name!r} is a transformers attention module whose layout torchslim "
            f"does not recognise (known: BERT attention.self.query/key/value, GPT-2 attn.c_attn, and "
            f"q_proj/k_proj/v_proj/o_proj with an mlp of fc1/fc2 or gate/up/down_proj), so its heads cannot be "
            f"pruned safely; name it in 'ignore' (ignore: ['{name}']) to keep it, or use svd/magnitude for this model")
    return blocks
