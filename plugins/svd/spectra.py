"""The math of low-rank decomposition: layer matrices, (whitened) spectra, factor weights, rank choice.

A layer's weight is viewed per group as a matrix ``W`` of shape ``(O', D')`` (the *output side* and
the *input side*) for one of three forms:

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

import torch
from torch import nn

from .eligibility import FORMS
from .modules import ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d

def weight_matrix(layer: nn.Module, form: str) -> torch.Tensor:
    """The float32 per-group matrix ``(groups, O', D')`` that ``form`` factorizes."""
    w = layer.weight.detach().float()
    if form == "linear":
        return w.unsqueeze(0)
    groups = layer.groups
    if form == "weight":
        return w.reshape(groups, w.shape[0] // groups, -1)
    if form == "spatial":
        out, cin, kh, kw = w.shape
        w = w.reshape(groups, out // groups, cin, kh, kw).permute(0, 1, 4, 2, 3)
        return w.reshape(groups, (out // groups) * kw, cin * kh)
    raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")



@dataclass
class Spectrum:
    """The principal output directions of one layer for one form, ready to cut at any rank.

    ``energies`` ``(groups, R)``: descending eigenvalues (squared singular values of ``W``, or of the
    whitened ``W L``). The directions are stored on the smaller side of ``W`` (``O' x D'``):
    ``left`` ``(groups, O', R)`` gives ``B = U_r``, ``A = U_r^T W``; otherwise ``right`` and
    ``right_inverse`` ``(groups, D', R)`` give ``B = W @ right_r``, ``A = right_inverse_r^T``
    (``L V`` and ``L^-T V`` of the whitened problem; both ``V`` for plain SVD).
    """

    form: str
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


def compute_spectrum(matrix: torch.Tensor, form: str, *, out_gram: torch.Tensor | None = None,
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
        return Spectrum(form, matrix, energies, left=left)
    # Tall: eigenvectors V of (W L)^T (W L) in the D' x D' space; W' = W L V_r V_r^T L^-1.
    if in_gram is None:
        energies, right = _eigh_desc(matrix.transpose(1, 2) @ matrix)
        return Spectrum(form, matrix, energies, right=right, right_inverse=right)
    chol = _cholesky(in_gram.float(), damping)
    whitened = matrix @ chol
    energies, vectors = _eigh_desc(whitened.transpose(1, 2) @ whitened)
    inverse = torch.linalg.solve_triangular(chol.transpose(1, 2), vectors, upper=True)
    return Spectrum(form, matrix, energies, right=chol @ vectors, right_inverse=inverse)



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
    if spectrum.form == "linear":
        module: nn.Module = LowRankLinear.like(layer, rank)
        first_w, second_w = first[0], second[0]
    elif spectrum.form == "weight":
        module = ChannelLowRankConv.like(layer, rank)
        first_w = first.reshape(g * rank, layer.in_channels // g, *layer.kernel_size)
        second_w = second.reshape(layer.out_channels, rank, *([1] * len(layer.kernel_size)))
    elif spectrum.form == "spatial":
        module = SpatialLowRankConv2d.like(layer, rank)
        kh, kw = layer.kernel_size
        first_w = first.reshape(g * rank, layer.in_channels // g, kh, 1)
        second_w = second.reshape(g, layer.out_channels // g, kw, rank).permute(0, 1, 3, 2)
        second_w = second_w.reshape(layer.out_channels, rank, 1, kw)
    else:
        raise ValueError(f"unknown form {spectrum.form!r}")
    dtype = layer.weight.dtype
    with torch.no_grad():
        module.first.weight.copy_(first_w.to(dtype))
        module.second.weight.copy_(second_w.to(dtype))
        if layer.bias is not None:
            module.second.bias.copy_(layer.bias.detach())
    module.train(layer.training)
    return module
