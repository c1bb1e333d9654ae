"""The math of low-rank decomposition: layer matrices, (whitened) spectra, factor weights, rank choice.

A layer's weight is viewed per group as a matrix ``W`` of shape ``(O', D')`` (the *output side* and
the *input side*) for one of three kinds:

- ``linear``: ``nn.Linear`` weight ``(out, in)``;
- ``channel``: ConvNd weight ``(out, in/groups, *K)`` per group as ``(out/g, in/g * prod(K))``;
- ``spatial``: Conv2d weight per group as ``(out/g * Kw, in/g * Kh)``: columns are vertical
  ``Kh x 1`` filters, rows horizontal ``1 x Kw`` filters (Jaderberg et al. 2014).

The rank-``r`` factors are ``W ~ B @ A`` with ``B = U_r`` (``O' x r``, orthonormal) and
``A = U_r^T W``, where ``U_r`` spans the top-``r`` principal directions of the layer's *output*:

- plain SVD: the top left singular vectors of ``W`` (eigenvectors of ``W W^T``);
- data-aware: the top eigenvectors of the output Gram matrix ``W G W^T = sum y y^T`` over calibration
  activations, where ``G = sum x x^T`` is the Gram matrix of the layer's input patches. Projecting
  ``W`` onto them is exactly the SVD-LLM (2024) solution ``U_r S_r V_r^T L^{-1}`` with ``L`` the
  Cholesky factor of ``G`` (``svd(W L) = U S V^T``), and minimises the output error ``||W X - W' X||``
  over all rank-``r`` ``W'``.

When ``O' > D'`` the same ``W'`` comes from the other side, ``W L V_r V_r^T L^-1`` with ``V`` the
eigenvectors of ``(W L)^T (W L)`` (``L = I`` for plain SVD). Each rank's scale is split evenly between
the two factors so both train alike.

The eigenvalues (squared singular values of ``W`` or ``W L``) measure what each rank keeps: the sum
of those dropped is the squared output error (data-aware) or weight error (plain). Working on the
smaller Gram side makes a wide matrix as cheap as a tall one (``torch.linalg.svd`` is ~3x slower on
a wide matrix than on its transpose); every computation is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lowrank import ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d

__all__ = [
    "KINDS", "GramCollector", "RankCurve", "Spectrum", "allocate_ranks", "applicable_kinds", "compute_spectrum",
    "factor_macs", "factor_weights", "factorize", "layer_macs", "macs_per_rank", "needed_gram", "rank_for_energy",
    "rank_for_ratio", "read_by_parent", "round_rank", "weight_matrix",
]

#: Every factorization kind.
KINDS = ("linear", "channel", "spatial")


# --------------------------------------------------------------------------- kinds and matrices
def applicable_kinds(layer: nn.Module) -> tuple[list[str], str | None]:
    """The kinds that can factorize ``layer``, or ``([], reason)`` when none can."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return [], "no floating-point weight to factorize"
    if type(layer) is nn.Linear or (isinstance(layer, nn.Linear) and weight.dim() == 2):
        return ["linear"], None
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups > 1 and layer.groups == layer.in_channels:
            return [], (f"depthwise conv (groups={layer.groups} = in_channels): each filter sees one "
                        f"channel, so no factorization reduces its MACs")
        kinds = ["channel"]
        if isinstance(layer, nn.Conv2d) and min(layer.kernel_size) > 1:
            kinds.append("spatial")
        return kinds, None
    return [], f"{type(layer).__name__} is not supported (Linear, Conv1d and Conv2d are)"


#: Containers whose forward reads a child layer's ``.weight`` itself instead of calling the child, so the
#: child cannot be swapped for factor modules: parent class -> (child names, how the parent reads them).
WEIGHT_READERS: dict[type[nn.Module], tuple[tuple[str, ...], str]] = {
    nn.TransformerEncoderLayer: (("linear1", "linear2"), "its fused inference fast path"),
    nn.TransformerDecoderLayer: (("linear1", "linear2"), "its fused inference fast path"),
    nn.MultiheadAttention: (("out_proj",), "F.multi_head_attention_forward"),
}


def read_by_parent(model: nn.Module, name: str) -> str | None:
    """Why the layer ``name`` of ``model`` cannot be replaced because its parent reads its weight, or None.

    ``nn.TransformerEncoderLayer``/``DecoderLayer`` hand ``linear1.weight`` and ``linear2.weight`` to a
    fused kernel, and ``nn.MultiheadAttention`` hands ``out_proj.weight`` to
    ``F.multi_head_attention_forward``: a factorized replacement has no single ``weight`` to give.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    for cls, (children, how) in WEIGHT_READERS.items():
        if isinstance(parent, cls) and child in children:
            return (f"its parent {type(parent).__name__} reads {child}.weight directly ({how}); factor "
                    f"modules have no single weight, so the layer is left as is")
    return None


def weight_matrix(layer: nn.Module, kind: str) -> torch.Tensor:
    """The float32 per-group matrix ``(groups, O', D')`` that ``kind`` factorizes."""
    w = layer.weight.detach().float()
    if kind == "linear":
        return w.unsqueeze(0)
    groups = layer.groups
    if kind == "channel":
        return w.reshape(groups, w.shape[0] // groups, -1)
    if kind == "spatial":
        out, cin, kh, kw = w.shape
        w = w.reshape(groups, out // groups, cin, kh, kw).permute(0, 1, 4, 2, 3)
        return w.reshape(groups, (out // groups) * kw, cin * kh)
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


# --------------------------------------------------------------------------- spectra
@dataclass
class Spectrum:
    """The principal output directions of one layer for one kind, ready to cut at any rank.

    ``energies`` ``(groups, R)``: descending eigenvalues (squared singular values of ``W``, or of the
    whitened ``W L``). The directions are stored on the smaller side of ``W`` (``O' x D'``):
    ``left`` ``(groups, O', R)`` gives ``B = U_r``, ``A = U_r^T W``; otherwise ``right`` and
    ``right_inverse`` ``(groups, D', R)`` give ``B = W @ right_r``, ``A = right_inverse_r^T``
    (``L V`` and ``L^-T V`` of the whitened problem; both ``V`` for plain SVD).
    """

    kind: str
    matrix: torch.Tensor
    energies: torch.Tensor
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    right_inverse: torch.Tensor | None = None

    @property
    def full_rank(self) -> int:
        return int(self.energies.shape[-1])

    def kept(self) -> torch.Tensor:
        """Cumulative fraction of the energy kept at rank ``1..R`` (summed over groups)."""
        total = self.energies.sum(0)
        return total.cumsum(0) / total.sum().clamp_min(torch.finfo(total.dtype).tiny)

    def error_at(self, rank: int) -> float:
        """Estimated relative error at ``rank``: sqrt(dropped / total energy)."""
        if rank >= self.full_rank:
            return 0.0
        return math.sqrt(max(0.0, 1.0 - float(self.kept()[rank - 1])))


def _eigh_desc(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(matrix)
    return values.flip(-1).clamp_min(0.0), vectors.flip(-1)


def _ridge(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """``gram + damping * mean(diag(gram)) * I`` (per batch entry), so the Cholesky factor exists."""
    size = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    return gram + (damping * scale)[:, None, None] * eye


def _cholesky(gram: torch.Tensor, damping: float) -> torch.Tensor:
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(_ridge(gram, damping * 10 ** attempt))
        if not bool(info.any()):
            return factor
    raise torch.linalg.LinAlgError("input Gram matrix is not positive definite even with damping")


def compute_spectrum(matrix: torch.Tensor, kind: str, *, out_gram: torch.Tensor | None = None,
                     in_gram: torch.Tensor | None = None, damping: float = 1e-2) -> Spectrum:
    """The principal output directions of ``matrix`` ``(g, O', D')``, plain or data-aware.

    Plain without grams. With ``out_gram`` (``(g, O', O')``, the calibration sum of ``y y^T`` of the
    bias-free output) or ``in_gram`` (``(g, D', D')``, the sum of ``x x^T`` of input patches), the
    directions minimise the output error instead. ``damping`` (relative to the mean eigenvalue) blends
    toward plain SVD and keeps rank-deficient activations well posed. One symmetric eigendecomposition
    of the smaller side's Gram matrix does the work, in float32.
    """
    matrix = matrix.float()
    g, rows, cols = matrix.shape
    if rows <= cols:
        if out_gram is not None:
            plain = matrix @ matrix.transpose(1, 2)
            scale = out_gram.diagonal(dim1=-2, dim2=-1).sum(-1) / plain.diagonal(dim1=-2, dim2=-1).sum(-1)
            cov = out_gram.float() + (damping * scale.clamp_min(1e-12))[:, None, None] * plain
        elif in_gram is not None:
            cov = matrix @ _ridge(in_gram.float(), damping) @ matrix.transpose(1, 2)
        else:
            cov = matrix @ matrix.transpose(1, 2)
        energies, left = _eigh_desc(cov)
        return Spectrum(kind, matrix, energies, left=left)
    # Tall: eigenvectors V of (W L)^T (W L) in the D' x D' space; W' = W L V_r V_r^T L^-1.
    if in_gram is None:
        energies, right = _eigh_desc(matrix.transpose(1, 2) @ matrix)
        return Spectrum(kind, matrix, energies, right=right, right_inverse=right)
    chol = _cholesky(in_gram.float(), damping)
    whitened = matrix @ chol
    energies, vectors = _eigh_desc(whitened.transpose(1, 2) @ whitened)
    inverse = torch.linalg.solve_triangular(chol.transpose(1, 2), vectors, upper=True)
    return Spectrum(kind, matrix, energies, right=chol @ vectors, right_inverse=inverse)


# --------------------------------------------------------------------------- factors
def factor_weights(spectrum: Spectrum, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` with ``B @ A ~ W``: ``B`` ``(g, O', r)``, ``A`` ``(g, r, D')``, norms balanced.

    Exact at full rank whatever the directions. Each rank's scale is split evenly between ``B`` and
    ``A`` so both factors train alike.
    """
    if spectrum.left is not None:
        second = spectrum.left[..., :rank]
        first = second.transpose(1, 2) @ spectrum.matrix
    else:
        second = spectrum.matrix @ spectrum.right[..., :rank]
        first = spectrum.right_inverse[..., :rank].transpose(1, 2)
    second_norm, first_norm = second.norm(dim=1), first.norm(dim=-1)  # (g, r) each
    usable = (second_norm > 1e-12) & (first_norm > 1e-12)
    scale = torch.where(usable, (first_norm / second_norm.clamp_min(1e-12)).sqrt(), torch.ones_like(first_norm))
    return second * scale[:, None, :], first / scale[..., None]


def factorize(layer: nn.Module, spectrum: Spectrum, rank: int) -> nn.Module:
    """The factor module replacing ``layer`` at ``rank`` (per group), with weights from ``spectrum``."""
    rank = max(1, min(int(rank), spectrum.full_rank))
    second, first = factor_weights(spectrum, rank)
    g = second.shape[0]
    if spectrum.kind == "linear":
        module: nn.Module = LowRankLinear.like(layer, rank)
        first_w, second_w = first[0], second[0]
    elif spectrum.kind == "channel":
        module = ChannelLowRankConv.like(layer, rank)
        first_w = first.reshape(g * rank, layer.in_channels // g, *layer.kernel_size)
        second_w = second.reshape(layer.out_channels, rank, *([1] * len(layer.kernel_size)))
    elif spectrum.kind == "spatial":
        module = SpatialLowRankConv2d.like(layer, rank)
        kh, kw = layer.kernel_size
        first_w = first.reshape(g * rank, layer.in_channels // g, kh, 1)
        second_w = second.reshape(g, layer.out_channels // g, kw, rank).permute(0, 1, 3, 2)
        second_w = second_w.reshape(layer.out_channels, rank, 1, kw)
    else:
        raise ValueError(f"unknown kind {spectrum.kind!r}")
    dtype = layer.weight.dtype
    with torch.no_grad():
        module.first.weight.copy_(first_w.to(dtype))
        module.second.weight.copy_(second_w.to(dtype))
        if layer.bias is not None:
            module.second.bias.copy_(layer.bias.detach())
    module.train(layer.training)
    return module


# --------------------------------------------------------------------------- MACs
def layer_macs(layer: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of one call of a Linear/ConvNd with these input and output shapes."""
    if isinstance(layer, nn.Linear):
        return math.prod(out_shape[:-1]) * layer.in_features * layer.out_features
    kernel = math.prod(layer.kernel_size)
    return math.prod(out_shape) * (layer.in_channels // layer.groups) * kernel


def macs_per_rank(layer: nn.Module, kind: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs the ``kind`` factor module spends per unit of (per-group) rank; linear in the rank."""
    if kind == "linear":
        return math.prod(out_shape[:-1]) * (layer.in_features + layer.out_features)
    batch, positions = out_shape[0], math.prod(out_shape[2:])
    if kind == "channel":
        return batch * positions * (layer.in_channels * math.prod(layer.kernel_size) + layer.out_channels)
    if kind == "spatial":
        (kh, kw), width_in, height_out = layer.kernel_size, in_shape[-1], out_shape[-2]
        vertical = height_out * width_in * layer.in_channels * kh   # the Kh x 1 conv keeps the full width
        horizontal = positions * layer.out_channels * kw
        return batch * (vertical + horizontal)
    raise ValueError(f"unknown kind {kind!r}")


def factor_macs(layer: nn.Module, kind: str, rank: int, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of the ``kind`` factor module of ``layer`` at ``rank``."""
    return macs_per_rank(layer, kind, in_shape, out_shape) * int(rank)


# --------------------------------------------------------------------------- rank choice
def round_rank(rank: int, multiple: int, full_rank: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, at most ``full_rank`` and at least 1."""
    if multiple > 1:
        rank = -(-rank // multiple) * multiple
    return max(1, min(int(rank), full_rank))


def rank_for_ratio(full_rank: int, ratio: float, multiple: int = 1) -> int:
    """The rank keeping ``ratio`` of ``full_rank`` (rounded to ``multiple``)."""
    return round_rank(max(1, round(ratio * full_rank)), multiple, full_rank)


def rank_for_energy(spectrum: Spectrum, energy: float, multiple: int = 1) -> int:
    """The smallest rank whose directions hold ``energy`` of the total (rounded to ``multiple``)."""
    kept = spectrum.kept()
    target = torch.tensor([energy - 1e-7], dtype=kept.dtype, device=kept.device)
    rank = int(torch.searchsorted(kept, target)) + 1
    return round_rank(rank, multiple, spectrum.full_rank)


@dataclass
class RankCurve:
    """What the MAC allocator knows about one layer: cost per rank, original MACs, spectrum.

    ``time`` is an optional measured latency model ``(original_ms, fixed_ms, ms_per_rank)``: the
    factors at rank ``r`` take ``fixed_ms + ms_per_rank * r``. With it the allocator ranks cuts by
    error per millisecond saved instead of per MAC saved (the MAC budget still decides when to stop),
    so a layer whose factors pay a large fixed cost is cut last.
    """

    macs: int                  # MACs of the original layer
    cost_per_rank: int         # MACs of the factor module per unit of rank
    energies: torch.Tensor     # (R,) descending, summed over groups
    weight: float = 1.0        # how much this layer's normalized error costs (its measured sensitivity)
    min_rank: int = 1          # no rank below this (deeper cuts were measured not to pay off)
    time: tuple[float, float, float] | None = None


def _hull_items(curve: RankCurve, multiple: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The convex hull steps of one layer's (gain, error) curve: ``(density, rank, MACs saved)`` each.

    The gain is MACs saved, or milliseconds saved when the curve has a latency model; a rank whose
    factors would not be faster than the original is no candidate then.
    """
    energies = curve.energies.double()
    full = energies.numel()
    step = max(1, multiple)
    ranks = torch.arange(step, full, step, dtype=torch.long)
    cost = ranks.double() * curve.cost_per_rank
    gain = curve.macs - cost
    if curve.time is not None:
        original, fixed, per_rank = curve.time
        # a rank that does not change the time (per_rank <= 0 from noise) saves a little, so deeper cuts
        # still come last: only when the MAC budget needs them
        per_rank = max(per_rank, 1e-6 * original / full)
        gain = original - (fixed + per_rank * ranks.double())
    useful = (cost < curve.macs) & (ranks >= curve.min_rank) & (gain > 0)
    ranks, cost, gain = ranks[useful], cost[useful], gain[useful]
    if ranks.numel() == 0:
        return None
    tail = energies.flip(0).cumsum(0).flip(0)              # tail[k] = energy of directions k..R-1
    error = curve.weight * tail[ranks] / tail[0].clamp_min(1e-30)  # weighted normalized energy lost
    first_density = error / gain
    # From the original layer (gain 0, error 0) the first hull point is the cheapest slope; below it
    # the curve is convex, so each further step down in rank has a larger slope than the one before.
    start = int(torch.nonzero(first_density == first_density.min()).max())
    ranks, cost, gain, error = (t[: start + 1].flip(0) for t in (ranks, cost, gain, error))
    savings = torch.cat([curve.macs - cost[:1], cost[:-1] - cost[1:]])
    gained = torch.cat([gain[:1], gain[1:] - gain[:-1]])
    lost = torch.cat([error[:1], error[1:] - error[:-1]])
    return lost / gained, ranks, savings


def allocate_ranks(curves: Sequence[RankCurve], savings_needed: float, multiple: int = 1) -> list[int | None]:
    """Per-layer ranks (None: keep the layer) that save ``savings_needed`` MACs at least error.

    Greedy on the convex hull of every layer's (MACs, normalized energy lost x weight) curve: the
    steps that lose the least energy per MAC saved (per millisecond saved, for curves with a latency
    model) go first, whichever layer they belong to, until the MAC savings are reached (or every
    useful step is taken). Ranks are multiples of ``multiple``.
    """
    chosen: list[int | None] = [None] * len(curves)
    if savings_needed <= 0:
        return chosen
    parts = [(i, _hull_items(c, multiple)) for i, c in enumerate(curves)]
    parts = [(i, p) for i, p in parts if p is not None]
    if not parts:
        return chosen
    density = torch.cat([p[0] for _, p in parts])
    ranks = torch.cat([p[1] for _, p in parts])
    savings = torch.cat([p[2] for _, p in parts])
    owner = torch.cat([torch.full((p[1].numel(),), i, dtype=torch.long) for i, p in parts])
    order = torch.sort(density, stable=True).indices
    reached = savings[order].cumsum(0) >= savings_needed
    count = int(torch.nonzero(reached)[0]) + 1 if bool(reached.any()) else order.numel()
    taken = order[:count]
    lowest = torch.full((len(curves),), torch.iinfo(torch.long).max, dtype=torch.long)
    lowest.scatter_reduce_(0, owner[taken], ranks[taken], reduce="amin")
    # The last step taken may overshoot (the first step of a layer is a jump); hand the surplus back
    # to that layer, the one losing the most per MAC, as extra rank.
    surplus = float(savings[taken].sum()) - savings_needed
    last = int(owner[taken[-1]])
    curve, step = curves[last], max(1, multiple)
    extra = int(surplus // (curve.cost_per_rank * step)) * step
    if extra > 0:
        limit = min(curve.energies.numel() - 1, -(-curve.macs // curve.cost_per_rank) - 1)  # still saves MACs
        raised = min(int(lowest[last]) + extra, limit // step * step if step > 1 else limit)
        lowest[last] = max(int(lowest[last]), raised)
    for i in torch.nonzero(lowest < torch.iinfo(torch.long).max).flatten().tolist():
        chosen[i] = int(lowest[i])
    return chosen


# --------------------------------------------------------------------------- calibration statistics
def _padded(layer: nn.Module, x: torch.Tensor, axes: str = "all") -> torch.Tensor:
    """``x`` padded as ``layer`` pads it (mode and "same" included); ``axes="height"`` pads only H."""
    pad = list(layer._reversed_padding_repeated_twice)
    if axes == "height":
        pad[:2] = [0, 0]
    if not any(pad):
        return x
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, pad, mode=mode)


def _patches(layer: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Input patches ``(groups, D', positions)`` that ``kind``'s matrix multiplies."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if isinstance(layer, nn.Conv1d):  # treat as a 1 x K Conv2d
        x = _padded(layer, x).unsqueeze(2)
        patches = F.unfold(x, (1, layer.kernel_size[0]), dilation=(1, layer.dilation[0]),
                           stride=(1, layer.stride[0]))
    elif kind == "channel":
        patches = F.unfold(_padded(layer, x), layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    else:  # spatial: vertical Kh x 1 patches at every column (cross-column correlations are ignored)
        patches = F.unfold(_padded(layer, x, "height"), (layer.kernel_size[0], 1),
                           dilation=(layer.dilation[0], 1), stride=(layer.stride[0], 1))
    n, rows, positions = patches.shape
    g = layer.groups
    return patches.reshape(n, g, rows // g, positions).permute(1, 2, 0, 3).reshape(g, rows // g, n * positions)


def _outputs(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The bias-free output ``(groups, O', positions)`` of a Linear/ConvNd."""
    if isinstance(layer, nn.Linear):
        y = y.reshape(-1, y.shape[-1])
        if layer.bias is not None:
            y = y - layer.bias
        return y.t().unsqueeze(0)
    if layer.bias is not None:
        y = y - layer.bias.view(1, -1, *([1] * (y.dim() - 2)))
    n, out = y.shape[:2]
    g = layer.groups
    return y.reshape(n, g, out // g, -1).permute(1, 2, 0, 3).reshape(g, out // g, -1)


def needed_gram(layer: nn.Module, kind: str) -> str:
    """Which calibration statistic data-aware ``kind`` needs: ``"out"`` or ``"in"``."""
    if kind == "spatial":
        return "in"
    if kind == "linear":
        rows, cols = layer.out_features, layer.in_features
    else:
        rows = layer.out_channels // layer.groups
        cols = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return "out" if rows <= cols else "in"


class GramCollector:
    """Forward hooks that sum the Gram matrices data-aware factorization needs, over calibration passes.

    ``wanted`` maps a module name to ``(module, kinds)``. After the passes, :meth:`grams` returns, per
    name and kind, ``{"out_gram": ...}`` or ``{"in_gram": ...}`` for :func:`compute_spectrum`.
    Use as a context manager around the forward passes.
    """

    def __init__(self, wanted: dict[str, tuple[nn.Module, Sequence[str]]]) -> None:
        self.wanted = wanted
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.handles: list = []

    def _hook(self, name: str, layer: nn.Module, kinds: Sequence[str]):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().float()
            for kind in kinds:
                source = needed_gram(layer, kind)
                data = _outputs(layer, output.detach().float()) if source == "out" else _patches(layer, x, kind)
                gram = data @ data.transpose(1, 2)
                key = (name, kind)
                self.sums[key] = gram if key not in self.sums else self.sums[key] + gram
        return hook

    def __enter__(self) -> "GramCollector":
        for name, (layer, kinds) in self.wanted.items():
            self.handles.append(layer.register_forward_hook(self._hook(name, layer, kinds)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def grams(self, name: str, kind: str) -> dict[str, torch.Tensor]:
        """Keyword arguments for :func:`compute_spectrum` (empty when the layer never ran)."""
        gram = self.sums.get((name, kind))
        if gram is None:
            return {}
        layer = self.wanted[name][0]
        return {"out_gram": gram} if needed_gram(layer, kind) == "out" else {"in_gram": gram}
