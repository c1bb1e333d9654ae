"""Standard layers whose shapes a compression may change, and how to read their constructor arguments."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torch.nn.utils import parametrize

from ..registry import module_kind_name
from .manifest import jsonable


def _conv(m: nn.Module) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
            "stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups,
            "bias": m.bias is not None, "padding_mode": m.padding_mode}


def _conv_transpose(m: nn.Module) -> dict[str, Any]:
    return {**_conv(m), "output_padding": m.output_padding}


def _linear(m: nn.Module) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _batch_norm(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _layer_norm(m: nn.Module) -> dict[str, Any]:
    return {"normalized_shape": m.normalized_shape, "eps": m.eps,
            "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None}


def _group_norm(m: nn.Module) -> dict[str, Any]:
    return {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps, "affine": m.affine}


def _multihead_attention(m: nn.Module) -> dict[str, Any]:
    return {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "dropout": m.dropout,
            "bias": m.in_proj_bias is not None, "add_bias_kv": m.bias_k is not None,
            "add_zero_attn": m.add_zero_attn, "kdim": m.kdim, "vdim": m.vdim, "batch_first": m.batch_first}


def _embedding(m: nn.Module) -> dict[str, Any]:
    return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx,
            "max_norm": m.max_norm, "norm_type": m.norm_type, "scale_grad_by_freq": m.scale_grad_by_freq,
            "sparse": m.sparse}


#: Layers whose shapes channel pruning may change, with how to read their constructor arguments.
STANDARD_LAYERS: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm, nn.BatchNorm3d: _batch_norm,
    nn.InstanceNorm1d: _batch_norm, nn.InstanceNorm2d: _batch_norm, nn.InstanceNorm3d: _batch_norm,
    nn.LayerNorm: _layer_norm, nn.GroupNorm: _group_norm, nn.Embedding: _embedding,
    nn.MultiheadAttention: _multihead_attention,
}


LAYER_BY_NAME = {module_kind_name(cls): cls for cls in STANDARD_LAYERS}


def layer_args(module: nn.Module) -> dict[str, Any] | None:
    """The JSON constructor arguments of a standard layer (masked or not), or None for other modules."""
    reader = STANDARD_LAYERS.get(parametrize.type_before_parametrizations(module))
    return None if reader is None else jsonable(reader(module), "layer arguments")
