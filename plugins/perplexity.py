"""The ``perplexity`` evaluator: held-out perplexity of a causal language model.

Every real token of ``eval_data`` is predicted from the tokens before it (shifted next-token
cross-entropy); perplexity is ``exp`` of the mean negative log-likelihood per predicted token.
Tokens that are not predicted: the first of each row, positions whose ``attention_mask`` is 0
(padding), and labels equal to -100 (the Hugging Face convention). Batches are keyword inputs such
as those of :func:`torchslim.text.token_batches` (``model(**batch)``, a ``"labels"`` key is used as
the targets when present and never passed to the model), ``(input_ids, labels)`` pairs, or a lone
``input_ids`` tensor. The model returns logits ``[batch, sequence, vocabulary]``: a tensor, a dict
or Hugging Face output with ``logits``, or a tuple whose first entry is the logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim import distributed
from torchslim.batches import iterate, split_batch
from torchslim.measure import eval_mode

IGNORE = -100


def lm_logits(output: Any, where: str) -> torch.Tensor:
    """The ``[batch, sequence, vocabulary]`` logits of a language model's output."""
    logits = output
    if isinstance(output, Mapping):
        logits = output.get("logits")
    elif not isinstance(output, torch.Tensor) and isinstance(getattr(output, "logits", None), torch.Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        got = (f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else type(output).__name__)
        raise torchslim.DataError(f"{where}: perplexity needs next-token logits [batch, sequence, vocabulary] "
                                  f"(a tensor, .logits or ['logits']); the model returned {got}")
    return logits


def _targets(inputs: Any, labels: Any, where: str) -> torch.Tensor:
    """Per-position targets ``[batch, sequence]``: the labels (or input ids), -100 where not predicted."""
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
    if isinstance(ids, (tuple, list)) and ids:
        ids = ids[0]
    target = labels if labels is not None else ids
    if not isinstance(target, torch.Tensor) or target.dim() != 2 or target.is_floating_point():
        raise torchslim.DataError(
            f"{where}: perplexity needs integer token ids [batch, sequence]: an 'input_ids' key, an "
            f"(input_ids, labels) pair or an input_ids tensor (torchslim.text.token_batches makes them); got "
            f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    target = target.long().clone()
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.shape == target.shape:
        target[mask.to(target.device) == 0] = IGNORE
    return target


def next_token_loss(logits: torch.Tensor, target: torch.Tensor, where: str) -> tuple[float, int]:
    """``(summed negative log-likelihood, predicted tokens)`` of a batch: position t predicts token t+1."""
    if logits.shape[:2] != target.shape:
        raise torchslim.DataError(f"{where}: logits {tuple(logits.shape)} do not match the token ids "
                                  f"{tuple(target.shape)} ([batch, sequence] must agree)")
    shifted = target[:, 1:].to(logits.device)
    vocab = logits.shape[-1]
    counted = shifted != IGNORE
    if bool(((shifted < 0) & counted).any()) or bool((counted & (shifted >= vocab)).any()):
        bad = int(shifted[counted & ((shifted < 0) | (shifted >= vocab))][0])
        raise torchslim.DataError(f"{where}: token id {bad} is outside the model's vocabulary of {vocab}; "
                                  f"use the model's own tokenizer")
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), shifted.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
    return float(loss), int(counted.sum())


class Perplexity:
    """``perplexity`` (lower is better) and ``eval_nll`` (mean nats per token) of a causal LM on eval_data.

    Reads at most ``evaluation.max_eval_batches`` batches; under torchrun each rank reads its share
    and the sums are added. Returns ``{}`` when there is no eval data.
    """

    metrics = {"perplexity": "lower", "eval_nll": "lower"}
    by_default = False  # classification runs have no token ids: ask for it with evaluate: [perplexity]

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        if context.eval_data is None:
            return {}
        settings = context.evaluation
        limit = settings.max_eval_batches if settings is not None else None
        shard, sharded = distributed.shard_eval(context.eval_data, limit)
        batches = shard if sharded else iterate(context.eval_data, "eval_data", limit=limit)
        sums = torch.zeros(2, dtype=torch.float64)  # nll, tokens
        with eval_mode(model), torch.no_grad():
            for index, batch in enumerate(batches, start=1):
                where = f"eval_data batch {index}"
                inputs, labels = split_batch(batch)
                target = _targets(inputs, labels, where)
                logits = lm_logits(context.forward(model, inputs, where), where)
                nll, tokens = next_token_loss(logits, target, where)
                sums += torch.tensor([nll, tokens], dtype=torch.float64)
        if sharded:
            distributed.all_reduce_sum(sums)
        if sums[1] == 0:
            raise torchslim.DataError("eval_data has no token to predict (every row shorter than 2 real tokens, or "
                                      "all labels -100); perplexity needs rows of 2 tokens or more")
        mean = float(sums[0] / sums[1])
        return {"perplexity": math.exp(mean), "eval_nll": mean}
