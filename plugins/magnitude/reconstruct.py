"""Update the kept weights of a pruned layer so its outputs on calibration data change least.

For a layer ``y = W x`` with input Gram matrix ``H = X^T X`` and a keep-mask ``M``, each output row
``w`` should become ``w'`` (zero where ``M`` prunes) minimising ``(w - w')^T H (w - w')``. We use the
column-wise Optimal Brain Surgeon sweep of SparseGPT (Frantar & Alistarh, 2023): walk the columns left
to right; zeroing a pruned entry spreads its error over the columns not yet visited in proportion to
the Cholesky factor of ``H^-1``. It runs on all rows at once, one Python step per *column* (never per
element), in blocks so most work is matrix products: ``O(cols^3 + rows * cols^2)`` per layer.

The mask is either given (``keep``: chosen beforehand by a score) or chosen during the sweep, as
SparseGPT does: block by block from the weights *already updated* by the earlier columns, by the
saliency ``w^2 / [H^-1]_ii`` (the output error that zeroing ``w`` costs), and for N:M patterns group
by group at the group's first column. The sweep then prunes what is cheapest *after* compensation,
which a score computed up front cannot know.

The sweep compensates each zero only with the columns to its right, so its weights are not the
least-squares optimum of the mask it ends with; :func:`exact_update` solves that optimum (the step's
``update: exact``, the default).
"""

from __future__ import annotations

import torch


def prepared_gram(gram: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """``(H, scale)``: a copy of ``gram`` in ``dtype`` with a unit diagonal for inputs that never fire,
    and the mean of its diagonal, the unit every damping here is relative to.

    Inputs that never fire (zero diagonal) get a unit diagonal so ``H`` stays invertible; their weights
    then receive no error, which is right because they never affect the output.
    """
    H = gram.to(dtype).clone()
    diag = H.diagonal()
    diag[diag <= 0] = 1.0
    return H, float(diag.mean())


def inverse_hessian_factor(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (``H`` from :func:`prepared_gram`);
    raises the damping until it works."""
    H, scale = prepared_gram(gram, torch.float64)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    factor = max(damp, 1e-8)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(H + factor * scale * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        factor *= 10
    raise RuntimeError("the calibration Gram matrix stayed singular after damping; raise 'damp'")


def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, *, damp: float = 0.1, keep: torch.Tensor | None = None,
              count: int | torch.Tensor | None = None, n_of_m: tuple[int, int] | None = None,
              forced: torch.Tensor | None = None, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, keep)``: ``weight`` (``[rows, cols]``) pruned and compensated, and the keep-mask used.

    Exactly one way to choose the mask: ``keep`` (fixed boolean mask, True keeps), ``count`` (prune
    that many entries chosen in the sweep: an int over the whole matrix, or a ``[rows]`` tensor per
    row) or ``n_of_m`` (prune ``M - N`` of every ``M`` consecutive columns in each row, chosen in the
    sweep; ``cols`` must be a multiple of ``M``). ``forced`` marks entries that must be pruned in any
    case (zeros of an earlier round). ``gram`` is the ``[cols, cols]`` input Gram matrix. The result
    is in ``weight``'s dtype, exactly 0 where the mask prunes.
    """
    rows, cols = weight.shape
    U = inverse_hessian_factor(gram, damp).to(torch.float32)
    W = weight.detach().to(torch.float32).clone()
    pruned = (~keep).clone() if keep is not None else torch.zeros_like(W, dtype=torch.bool)
    if forced is not None:
        pruned |= forced
    quota = _Quota(count, rows, cols, W.device) if keep is None and n_of_m is None else None
    if n_of_m is not None:
        block = max(n_of_m[1], block // n_of_m[1] * n_of_m[1])
    d2 = U.diagonal().pow(2)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W1 = W[:, start:end].clone()
        errors = torch.zeros_like(W1)
        U1 = U[start:end, start:end]
        P1 = pruned[:, start:end]  # a view: choices made below land in ``pruned``
        if quota is not None:
            P1 |= quota.choose(W1.pow(2) / d2[start:end], P1.clone(), start, end)
        for i in range(end - start):
            if n_of_m is not None and i % n_of_m[1] == 0:
                width = n_of_m[1]
                P1[:, i:i + width] = _n_of_m(W1[:, i:i + width].pow(2) / d2[start + i:start + i + width],
                                             P1[:, i:i + width], n_of_m)
            column = W1[:, i]
            err = torch.where(P1[:, i], column, torch.zeros_like(column)) / U1[i, i]
            # spread the error of the zeroed entries over the remaining columns of this block
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            errors[:, i] = err
        W1.masked_fill_(P1, 0.0)
        W[:, start:end] = W1
        if end < cols:
            W[:, end:] -= errors @ U[start:end, end:]
    W.masked_fill_(pruned, 0.0)
    return W.to(weight.dtype), ~pruned


def sparsegpt_update(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor, damp: float = 0.1,
                     block: int = 128) -> torch.Tensor:
    """The weights with pruned entries (``keep`` False) zeroed and the rest compensated (fixed mask)."""
    return sparsegpt(weight, gram, damp=damp, keep=keep, block=block)[0]


def output_error(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(delta H delta^T)``: the squared output change over the calibration rows of a weight change."""
    delta = delta.double()
    return float(((delta @ gram.to(delta.device, torch.float64)) * delta).sum())


class _Quota:
    """How many entries each column block prunes so the total (per row, or overall) is exact."""

    def __init__(self, count: int | torch.Tensor | None, rows: int, cols: int, device: torch.device) -> None:
        if count is None:
            raise ValueError("sparsegpt: give keep, count or n_of_m")
        self.per_row = isinstance(count, torch.Tensor)
        self.left = count.to(device).long().clone() if self.per_row else int(count)
        self.cols = cols

    def choose(self, score: torch.Tensor, forced: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The entries of this block to prune: the lowest scores, forced ones first."""
        share = (end - start) / (self.cols - start)  # this block's part of what is left
        score = score.masked_fill(forced, float("-inf"))
        if self.per_row:
            want = torch.maximum((self.left.double() * share).round().long(), forced.sum(1))
            want = want.clamp(max=end - start)
            ranks = torch.empty_like(score, dtype=torch.long).scatter_(
                1, score.argsort(dim=1, stable=True),
                torch.arange(end - start, device=score.device).expand_as(score).contiguous())
            chosen = ranks < want.unsqueeze(1)
            self.left = self.left - want
            return chosen
        want = min(score.numel(), max(round(self.left * share), int(forced.sum())))
        chosen = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        if want > 0:
            chosen[score.reshape(-1).topk(want, largest=False, sorted=False).indices] = True
        self.left -= want
        return chosen.reshape(score.shape)


def _n_of_m(score: torch.Tensor, forced: torch.Tensor, n_of_m: tuple[int, int]) -> torch.Tensor:
    """Per row, the ``M - N`` lowest scores of one group of ``M`` columns (forced entries first)."""
    n, m = n_of_m
    score = score.masked_fill(forced, float("-inf"))
    lowest = score.topk(m - n, dim=1, largest=False).indices
    return torch.zeros_like(forced).scatter_(1, lowest, True) | forced


def exact_update(pruned: torch.Tensor, original: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor,
                 damp: float = 0.1, steps: int = 100, tol: float = 1e-6,
                 rhs: torch.Tensor | None = None) -> torch.Tensor:
    """The kept weights that minimise ``(w - w')^T H (w - w')`` exactly for a fixed mask, from ``pruned``.

    SparseGPT's sweep compensates a zeroed weight only with the columns to its right, so its result is
    not the least-squares optimum of its own mask (Boža, 2024). Each row's restricted system
    ``H_SS w'_S = (H w)_S`` is solved here by conjugate gradients on all rows at once (one
    ``[rows, cols] x [cols, cols]`` product per step, Jacobi-preconditioned), warm-started from
    ``pruned``; ``H`` gets the same relative damping as the sweep. ``rhs`` (``T X^T``, from
    :class:`~torchslim.calibration.PairedStats`) replaces the target ``W X`` by another output ``T`` on
    the same inputs (the dense model's); the damping still pulls toward ``original``. Returns
    ``[rows, cols]`` in ``pruned``'s dtype, exactly 0 where ``keep`` is False.
    """
    H, scale = prepared_gram(gram, torch.float32)
    H.diagonal().add_(damp * scale)
    mask = keep.to(torch.float32)
    inv_diag = 1.0 / H.diagonal()
    x = pruned.detach().to(torch.float32) * mask
    W0 = original.detach().to(torch.float32)
    b = (W0 @ H if rhs is None else rhs.to(torch.float32) + damp * scale * W0) * mask
    r = b - (x @ H) * mask
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(1, keepdim=True)
    start = float(rz.abs().sum())
    for _ in range(steps):
        if float(rz.abs().sum()) <= tol * max(start, 1e-30):
            break
        Ap = (p @ H) * mask
        alpha = rz / (p * Ap).sum(1, keepdim=True).clamp_min(1e-30)
        x += alpha * p
        r -= alpha * Ap
        z = r * inv_diag
        new_rz = (r * z).sum(1, keepdim=True)
        p = z + (new_rz / rz.clamp_min(1e-30)) * p
        rz = new_rz
    return (x * mask).to(pruned.dtype)
