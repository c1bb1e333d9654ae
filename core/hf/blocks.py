"""Recognise the transformer blocks of Hugging Face models: where the heads and the MLP width live.

Four layouts cover BERT-, GPT-2-, ViT- and Llama-style models (and the many models that copy them):

- ``bert``: ``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
  ``output.dense`` (BERT, RoBERTa, MiniLM, ...);
- ``gpt2``: fused ``attn.c_attn`` (q|k|v columns) and ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, all
  ``Conv1D`` (weight stored ``[in, out]``);
- ``qkvo``: ``{attention,self_attn}.{q,k,v,o}_proj`` with the MLP as ``mlp.{fc1,fc2}`` (ViT) or
  ``mlp.{gate,up,down}_proj`` (Llama, Mistral, Qwen...); ``k``/``v`` may have fewer heads than ``q``
  (grouped-query attention).

A :class:`Block` names the layers that carry each head and each MLP unit, so pruning can slice them
and :func:`sync_attributes` can set the attention module's head counts from the weight shapes (after
pruning, or after :func:`torchslim.load` rebuilt the layers). Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

from ..targets import is_transposed_linear

__all__ = ["Block", "find_blocks", "out_features", "in_features", "sync_attributes", "unrecognised_attention"]


@dataclass
class Block:
    """One transformer block: its layout and the full names of the layers holding heads and MLP units."""

    name: str
    layout: str                     # "bert" | "gpt2" | "qkvo"
    attention: str                  # the module whose forward splits heads (its attributes are updated)
    q: str                          # gpt2: the fused c_attn
    k: str | None
    v: str | None
    o: str
    mlp_in: tuple[str, ...]         # layers whose output units are the MLP width (gate/up, fc1, ...)
    mlp_out: str                    # the layer reading the MLP width
    head_dim: int

    def layers(self) -> list[str]:
        """Every layer name the block's surgery touches."""
        return [n for n in (self.q, self.k, self.v, self.o, *self.mlp_in, self.mlp_out) if n is not None]


def out_features(layer: nn.Module) -> int:
    """Output width of an ``nn.Linear`` or an HF ``Conv1D``."""
    return int(layer.weight.shape[1] if is_transposed_linear(layer) else layer.weight.shape[0])


def in_features(layer: nn.Module) -> int:
    """Input width of an ``nn.Linear`` or an HF ``Conv1D``."""
    return int(layer.weight.shape[0] if is_transposed_linear(layer) else layer.weight.shape[1])


def _has(model: nn.Module, names: list[str]) -> bool:
    for name in names:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return False
        if not (isinstance(layer, nn.Linear) or is_transposed_linear(layer)):
            return False
    return True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _head_dim(attention: nn.Module, layout: str) -> int | None:
    for attr in ("attention_head_size", "head_dim"):
        value = getattr(attention, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _match(model: nn.Module, name: str) -> Block | None:
    j = lambda rel: _join(name, rel)  # noqa: E731 - a short local helper
    bert = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    if _has(model, [j(n) for n in bert]):
        attention = j("attention.self")
        dim = _head_dim(model.get_submodule(attention), "bert")
        return None if dim is None else Block(name, "bert", attention, *[j(n) for n in bert[:4]],
                                              (j("intermediate.dense"),), j("output.dense"), dim)
    gpt2 = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    if _has(model, [j(n) for n in gpt2]) and not hasattr(model.get_submodule(j("attn")), "q_attn"):
        dim = _head_dim(model.get_submodule(j("attn")), "gpt2")
        return None if dim is None else Block(name, "gpt2", j("attn"), j("attn.c_attn"), None, None,
                                              j("attn.c_proj"), (j("mlp.c_fc"),), j("mlp.c_proj"), dim)
    for attn in ("self_attn", "attention", "attn"):
        qkvo = [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj", f"{attn}.o_proj"]
        if not _has(model, [j(n) for n in qkvo]):
            continue
        for mlp_in, mlp_out in ((("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), (("mlp.fc1",), "mlp.fc2"),
                                (("mlp.up_proj",), "mlp.down_proj")):
            if _has(model, [j(n) for n in (*mlp_in, mlp_out)]):
                dim = _head_dim(model.get_submodule(j(attn)), "qkvo")
                if dim is None:
                    return None
                return Block(name, "qkvo", j(attn), *[j(n) for n in qkvo], tuple(j(n) for n in mlp_in),
                             j(mlp_out), dim)
    return None


def find_blocks(model: nn.Module) -> list[Block]:
    """The recognised transformer blocks of ``model``, outermost first, in model order."""
    blocks: list[Block] = []
    for name, _ in model.named_modules():
        if any(name.startswith(b.name + ".") for b in blocks if b.name):
            continue
        block = _match(model, name)
        if block is not None:
            blocks.append(block)
    return blocks


def head_counts(model: nn.Module, block: Block) -> tuple[int, int]:
    """``(query heads, key/value heads)`` of ``block`` as its weights are now."""
    q = model.get_submodule(block.q)
    if block.layout == "gpt2":
        heads = out_features(q) // 3 // block.head_dim
        return heads, heads
    return out_features(q) // block.head_dim, out_features(model.get_submodule(block.k)) // block.head_dim


def sync_attributes(model: nn.Module, block: Block) -> None:
    """Set the attention module's head counts (and HF ``Conv1D`` sizes) from the block's weight shapes."""
    heads, kv_heads = head_counts(model, block)
    attention = model.get_submodule(block.attention)
    width = heads * block.head_dim
    if block.layout == "bert":
        attention.num_attention_heads = heads
        attention.all_head_size = width
    elif block.layout == "gpt2":
        attention.num_heads = heads
        attention.split_size = width
    else:
        for attr in ("num_attention_heads", "num_heads"):
            if hasattr(attention, attr):
                setattr(attention, attr, heads)
        if hasattr(attention, "num_key_value_heads"):
            attention.num_key_value_heads = kv_heads
        if hasattr(attention, "num_key_value_groups"):
            attention.num_key_value_groups = heads // max(kv_heads, 1)
    for name in block.layers():
        layer = model.get_submodule(name)
        if is_transposed_linear(layer):
            layer.nx, layer.nf = int(layer.weight.shape[0]), int(layer.weight.shape[1])
        elif isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = int(layer.weight.shape[0]), int(layer.weight.shape[1])


def unrecognised_attention(model: nn.Module, blocks: list[Block]) -> Iterator[tuple[str, nn.Module]]:
    """transformers attention modules outside every recognised block (their layout is not known here)."""
    inside = [b.name for b in blocks]
    for name, module in model.named_modules():
        cls = type(module)
        if not cls.__module__.startswith("transformers") or not cls.__name__.endswith("Attention"):
            continue
        if any(name == p or name.startswith(p + ".") or not p for p in inside):
            continue
        if any(isinstance(m, nn.Linear) or is_transposed_linear(m) for m in module.children()):
            yield name, module
