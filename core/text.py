"""From texts and a tokenizer to the batches a causal language model calibrates and evaluates on.

:func:`token_batches` turns a list of strings into keyword batches ``{"input_ids", "attention_mask"}``
of shape ``[batch, seq_len]``: pass them as ``train_data`` (calibration of ``magnitude``'s activation
criterion and reconstruction, ``svd``'s data-aware factors) or ``eval_data`` (the ``perplexity``
evaluator, which predicts every real token from the ones before it).

>>> batches = token_batches(texts, tokenizer, seq_len=128, batch_size=8)        # doctest: +SKIP
>>> Engine().run(model, recipe, train_data=batches, eval_data=held_out)           # doctest: +SKIP

Two layouts:

- ``pack=True`` (default, as language-model benchmarks measure perplexity): the texts' tokens are
  joined into one stream, separated by the tokenizer's end-of-text token when it has one, and cut
  into windows of exactly ``seq_len`` tokens; the stream's tail, shorter than a window, is padded
  (its ``attention_mask`` marks the padding 0), so every token is used once;
- ``pack=False``: one text per row, cut at ``seq_len`` tokens, shorter rows padded.

The tokenizer is a Hugging Face tokenizer (anything called as ``tokenizer(list_of_texts)`` that
returns ``input_ids``) or a plain callable ``text -> list[int]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from .errors import DataError

__all__ = ["token_batches"]


def _encode(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of every text, without special tokens where the tokenizer adds them."""
    try:
        encoded = tokenizer(list(texts), add_special_tokens=False)
    except TypeError:
        encoded = None
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        ids = encoded["input_ids"]
    else:  # a plain callable: one text at a time
        ids = [tokenizer(text) for text in texts]
    out = []
    for index, row in enumerate(ids):
        row = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        if not all(isinstance(t, int) for t in row):
            raise DataError(f"token_batches: the tokenizer returned {type(row[0]).__name__} ids for text {index}; "
                            f"it must return integer token ids")
        out.append(row)
    return out


def _special(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    return value if isinstance(value, int) else None


def token_batches(texts: Sequence[str], tokenizer: Any | Callable[[str], list[int]], seq_len: int,
                  batch_size: int, *, pack: bool = True) -> list[dict[str, torch.Tensor]]:
    """Keyword batches ``{"input_ids", "attention_mask"}`` (int64, ``[rows, seq_len]``) from ``texts``.

    ``pack=True`` joins the token streams (separated by ``tokenizer.eos_token_id`` when there is one)
    and cuts windows of ``seq_len`` tokens; ``pack=False`` keeps one text per row. Padding uses
    ``tokenizer.pad_token_id``, else its ``eos_token_id``, else 0, and is always marked 0 in
    ``attention_mask`` (statistics and the ``perplexity`` evaluator ignore it). The last batch may
    hold fewer than ``batch_size`` rows. Texts that give no tokens are skipped.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DataError(f"token_batches: texts must be a list of strings, got {type(texts).__name__}; "
                        f"wrap a single text as [text]")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"token_batches: texts[{bad}] is {type(texts[bad]).__name__}, not a string")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise DataError(f"token_batches: seq_len={seq_len!r} must be an integer >= 2 (a token and the one it predicts)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"token_batches: batch_size={batch_size!r} must be an integer >= 1")
    if not callable(tokenizer):
        raise DataError(f"token_batches: tokenizer={type(tokenizer).__name__} is not callable; pass a Hugging Face "
                        f"tokenizer or a function text -> list of token ids")
    ids = [row for row in _encode(texts, tokenizer) if row]
    if not ids:
        raise DataError(f"token_batches: the {len(texts)} text(s) gave no tokens; pass non-empty texts")
    eos = _special(tokenizer, "eos_token_id")
    pad = _special(tokenizer, "pad_token_id")
    pad = pad if pad is not None else eos if eos is not None else 0
    if pack:
        stream: list[int] = []
        for row in ids:
            stream += row + ([eos] if eos is not None else [])
        rows = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
        if len(rows) > 1 and len(rows[-1]) < 2:  # a lone token predicts nothing
            rows.pop()
    else:
        rows = [row[:seq_len] for row in ids]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = seq_len if pack else max(len(r) for r in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches
