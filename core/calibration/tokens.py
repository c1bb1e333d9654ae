"""Real tokens only: the rows of an activation that statistics should count.

A batch of keyword inputs with an ``attention_mask`` of shape ``[batch, sequence]`` (what every
tokenizer returns) marks its padding positions with 0. A layer's input of shape
``[batch, sequence, features]`` then has one row per position, and only the rows of real tokens
belong in a Gram matrix or an input norm: padding rows would pull the statistics toward whatever
the model computes on pad tokens. Activations of any other shape are used whole.

>>> x = torch.ones(2, 3, 4)
>>> feature_rows(x, torch.tensor([[1, 1, 0], [1, 0, 0]])).shape
torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def token_mask(inputs: Any) -> torch.Tensor | None:
    """The boolean ``[batch, sequence]`` mask of real tokens of a batch, or None when it has none.

    Read from the ``attention_mask`` entry of keyword inputs (a dict or a tokenizer's
    ``BatchEncoding``); None for positional inputs or a mask of another shape.
    """
    if not isinstance(inputs, Mapping):
        return None
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.bool()
    return None


def feature_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` as rows ``[N, features]`` (the last dimension), padding positions dropped.

    Rows are dropped only when ``x`` is ``[batch, sequence, features]`` and ``mask`` is
    ``[batch, sequence]`` with the same sizes; otherwise every row is kept.
    """
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])
