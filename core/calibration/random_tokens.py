"""Random-token calibration batches: inputs the calibration text never shows, for token-id models.

A data-aware method fits each layer to the activations its calibration text excites. Directions of
the embedding space that text never visits get no weight, and the compressed model goes wrong on
text from other sources that does visit them. Mixing in batches of token ids drawn uniformly from the
vocabulary spreads the statistics over the whole embedding table at the cost of more calibration
batches, not of anything the method keeps.

Each random batch is a copy of a real calibration batch (same shape, padding, ``attention_mask`` and
``token_type_ids``) whose real tokens between the first and the last of each row are replaced: the
first and last stay, since tokenizers put their special tokens ([CLS] ... [SEP], ``<s>`` ... ``</s>``)
there.

>>> from torch import nn
>>> model = nn.Sequential(nn.Embedding(50, 8))
>>> batch = {"input_ids": torch.tensor([[1, 7, 7, 7, 2, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]])}
>>> extra = random_token_batches([batch], 1.0, model, "step 0")
>>> extra[0]["input_ids"][0, [0, 4, 5]].tolist(), bool((extra[0]["input_ids"][0, 1:4] != 7).any())
([1, 2, 0], True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import DataError, ModelError

SEED = 20_240_601  # fixed: every rank and every run draws the same batches


def vocabulary_size(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (Hugging Face ``get_input_embeddings``, else its first
    ``nn.Embedding``), or None when it has none."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return None if embedding is None else embedding.num_embeddings


def random_token_batches(batches: Sequence[Any], ratio: float, model: nn.Module, where: str,
                         field: str = "random_tokens") -> list[Any]:
    """``round(ratio * len(batches))`` random-token copies of ``batches`` (cycling through them).

    ``where`` (the step) and ``field`` (the option) name the source of errors. Raises
    :class:`DataError` when a batch has no 2-D integer ``input_ids`` and :class:`ModelError` when the
    model has no embedding to read a vocabulary from. The copies are on the device of their source.
    """
    count = round(ratio * len(batches))
    if count == 0:
        return []
    vocabulary = vocabulary_size(model)
    if vocabulary is None:
        raise ModelError(f"{where}: {field}={ratio} draws token ids from the model's vocabulary, but the model has no "
                         f"nn.Embedding; set {field}: 0 for models that do not read token ids")
    generator = torch.Generator().manual_seed(SEED)
    out = []
    for index in range(count):
        batch = batches[index % len(batches)]
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise DataError(f"{where}: {field}={ratio} replaces the token ids of calibration batches, but batch {index} "
                            f"has no 2-D integer 'input_ids' (got {type(batch).__name__}); pass tokenized batches "
                            f"as dicts, or set {field}: 0")
        out.append({**batch, "input_ids": _randomized(ids, batch.get("attention_mask"), vocabulary, generator)})
    return out


def _randomized(ids: torch.Tensor, mask: Any, vocabulary: int, generator: torch.Generator) -> torch.Tensor:
    """``ids`` with every real token but each row's first and last drawn uniformly from the vocabulary
    (drawn on the CPU, so every device gets the same ids)."""
    out = ids.cpu().clone()
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        real = mask.cpu().bool()
    else:
        real = torch.ones_like(out, dtype=torch.bool)
    rows, length = torch.arange(out.shape[0]), out.shape[1]
    positions = torch.arange(length).expand_as(out)
    first = torch.where(real, positions, length).min(1).values.clamp_max(length - 1)
    last = torch.where(real, positions, -1).max(1).values.clamp_min(0)
    inner = real.clone()
    inner[rows, first] = False
    inner[rows, last] = False
    out[inner] = torch.randint(0, vocabulary, (int(inner.sum()),), generator=generator).to(out.dtype)
    return out.to(ids.device)
