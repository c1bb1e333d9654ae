"""Write a pruned transformer's new widths into its Hugging Face config, where the config can say them."""

from __future__ import annotations

from torch import nn

from .blocks import Block, head_counts, out_features


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    return config if config is not None and hasattr(config, "to_dict") else None


def update_config(model: nn.Module, blocks: list[Block]) -> list[str]:
    """Set ``intermediate_size``/``n_inner`` and (q/k/v/o layouts) head counts on ``model.config``.

    Only values every block shares are written; returns notes on what the config cannot express
    (per-block widths, pruned heads of BERT/GPT-2 layouts, whose head size is ``hidden / heads``).
    """
    config = _config(model)
    if config is None or not blocks:
        return []
    notes: list[str] = []
    widths = {out_features(model.get_submodule(b.mlp_in[0])) for b in blocks}
    layout = blocks[0].layout
    if len(widths) == 1:
        attr = "n_inner" if layout == "gpt2" else "intermediate_size"
        if hasattr(config, attr) or layout == "gpt2":
            setattr(config, attr, widths.pop())
    else:
        notes.append(f"blocks have different MLP widths {sorted(widths)}; the config cannot say that, so the "
                     f"model reloads through torchslim.hf.from_pretrained, not plain from_pretrained")
    heads = {head_counts(model, b) for b in blocks}
    before = getattr(config, "num_attention_heads", getattr(config, "n_head", None))
    if heads == {(before, getattr(config, "num_key_value_heads", before))}:
        return notes
    if len(heads) == 1 and layout == "qkvo":
        q, kv = heads.pop()
        config.head_dim = blocks[0].head_dim
        config.num_attention_heads = q
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = kv
    else:
        notes.append(f"pruned attention heads of {layout}-style blocks cannot be written into the config (its "
                     f"head size is hidden_size / heads); the model reloads through torchslim.hf.from_pretrained")
    return notes
