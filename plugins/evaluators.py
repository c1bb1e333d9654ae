"""Built-in evaluators: accuracy, params, nonzeros/sparsity, macs, latency and size.

Each is a plugin implementing the ``evaluate`` hook, registered under its family name (entry points
in group ``torchslim``), with a ``metrics`` attribute giving each metric's direction (``"higher"``
or ``"lower"`` is better). A recipe's ``evaluate: [...]`` list chooses which run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import torchslim
from torchslim import distributed
from torchslim.batches import as_inputs, batch_size, has_inputs, iterate, split_batch, to_device
from torchslim.datacheck import IGNORE_INDEX, check_classification_batch, logits_of
from torchslim.measure import count_macs, count_nonzeros, count_params, eval_mode, measure_latency
from torchslim.recipe import Evaluation


def _settings(context: Any) -> Evaluation:
    return context.evaluation if context.evaluation is not None else Evaluation()


def _example_inputs(context: Any) -> tuple | dict | None:
    """The example inputs as positional (tuple) or keyword (dict, e.g. a ``BatchEncoding``) inputs, or None."""
    inputs = context.example_inputs
    if not has_inputs(inputs):
        return None
    return to_device(as_inputs(inputs), context.device)


class Accuracy:
    """Top-1 accuracy on ``context.eval_data``; the user's ``metric_fn(model, eval_data)`` replaces it.

    Reads at most ``evaluation.max_eval_batches`` batches. Every batch is checked: labels outside the
    model's classes, non-integer labels, or a batch-size mismatch raise :class:`~torchslim.DataError`
    at the first bad batch. Returns ``{}`` when there is no eval data.
    """

    metrics = {"accuracy": "higher"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        if context.eval_data is None:
            return {}
        if context.metric_fn is not None:
            # Every rank runs the user's metric; rank 0's value is everyone's, so decisions agree.
            return {"accuracy": distributed.broadcast_object(float(context.metric_fn(model, context.eval_data)))}
        limit = _settings(context).max_eval_batches
        # Under torchrun each rank reads its share of the eval set and the counts are summed.
        shard, sharded = distributed.shard_eval(context.eval_data, limit)
        batches = shard if sharded else iterate(context.eval_data, "eval_data", limit=limit)
        counts = torch.zeros(2, dtype=torch.int64)  # correct, total
        with eval_mode(model), torch.no_grad():
            for index, batch in enumerate(batches, start=1):
                where = f"eval_data batch {index}" + (f" of rank {distributed.rank()}'s share" if sharded else "")
                inputs, target = split_batch(batch)
                output = context.forward(model, inputs, where)
                logits = context.scored(output, where) if hasattr(context, "scored") else logits_of(output, where)
                check_classification_batch(logits, target, where)
                target = target.to(logits.device)
                counted = target != IGNORE_INDEX
                counts[0] += int(((logits.argmax(dim=1) == target) & counted).sum())
                counts[1] += int(counted.sum())
        if sharded:
            distributed.all_reduce_sum(counts)
            if int(counts[1]) == 0 and _empty(context.eval_data):
                raise torchslim.DataError("eval_data yielded no batches; pass a non-empty DataLoader")
        correct, total = int(counts[0]), int(counts[1])
        if total == 0:
            raise torchslim.DataError(
                f"eval_data has only ignored targets ({IGNORE_INDEX}); accuracy needs at least one labelled sample"
            )
        return {"accuracy": correct / total}


def _empty(data: Any) -> bool:
    try:
        return len(data) == 0
    except TypeError:
        return False


class Params:
    """The number of unique parameters (a parametrized weight counts once, at its effective shape)."""

    metrics = {"params": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        return {"params": count_params(model)}


class Nonzeros:
    """Non-zero parameter values with pruning masks applied, and ``sparsity = 1 - nonzeros / params``."""

    metrics = {"nonzeros": "lower", "sparsity": "higher"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        params = count_params(model)
        nonzeros = count_nonzeros(model)
        return {"nonzeros": nonzeros, "sparsity": 1.0 - nonzeros / params if params else 0.0}


class Macs:
    """Multiply-accumulates of one forward pass on ``context.example_inputs`` (see torchslim.measure)."""

    metrics = {"macs": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        inputs = _example_inputs(context)
        if inputs is None:
            return {}
        return {"macs": count_macs(model, inputs)}


class Latency:
    """Median forward time in ms on ``context.example_inputs`` after warm-up.

    Uses ``evaluation.latency_runs``, ``latency_warmup`` and ``threads``; also reports the batch size
    (``latency_batch``) and torch thread count (``latency_threads``) it was measured with.
    """

    metrics = {"latency_ms": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        inputs = _example_inputs(context)
        if inputs is None:
            return {}
        settings = _settings(context)
        # Timed on rank 0 alone while the other ranks wait, so they neither compete for the machine
        # nor report different figures.
        ms = distributed.main_only(lambda: measure_latency(
            model, inputs, runs=settings.latency_runs, warmup=settings.latency_warmup, threads=settings.threads))
        threads = settings.threads if settings.threads is not None else torch.get_num_threads()
        return {"latency_ms": ms, "latency_batch": batch_size(inputs), "latency_threads": threads}


class Size:
    """Bytes written by :func:`torchslim.save` for the model (sparse and factorised forms included)."""

    metrics = {"size_bytes": "lower"}

    @torchslim.hookimpl
    def evaluate(self, model: nn.Module, context: Any) -> dict[str, float]:
        from torchslim import io

        # The size is the same on every rank; rank 0 writes the temporary copy once.
        return {"size_bytes": int(distributed.main_only(lambda: io.saved_size_bytes(model)))}
