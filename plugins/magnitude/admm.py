"""Gradual ADMM pruning (Boža, "Fast and Effective Weight Update for Pruned Large Language Models", 2024).

The layer problem is ``min (w - w')^T H (w - w')`` over each output row ``w'`` with a sparsity
constraint. ADMM splits it into a least-squares step and a projection onto the sparse set:

- ``W = (W0 H + rho (Z - U)) (H + rho I)^-1`` (every row at once: ``H``'s eigendecomposition is
  computed once, so each step is two matrix products);
- ``Z`` = ``W + U`` with its lowest-saliency entries zeroed (``v^2 H_ii``, by row, by tensor or per N:M
  group, as the step's scope asks), the zeroed share rising on a cubic ramp to the target;
- ``U += W - Z``; ``rho`` grows by ``growth`` every ``every`` steps so ``W`` and ``Z`` meet.

Unlike SparseGPT's one pass, an entry zeroed early can come back while the sparsity ramps up, and every
kept weight (not only those to the right of a zero) compensates. The final mask's kept weights are then
solved exactly (:func:`.reconstruct.exact_update`). Cost: one ``cols x cols`` eigendecomposition and
``2 x steps`` products of ``[rows, cols] x [cols, cols]`` per layer (about 3 s for MiniLM's 384 x 1536
layers on two cores).
"""

from __future__ import annotations

import torch

from .reconstruct import exact_update, prepared_gram
from .select import prune_lowest


def admm_prune(weight: torch.Tensor, gram: torch.Tensor, *, damp: float = 0.1,
               count: int | torch.Tensor | None = None, n_of_m: tuple[int, int] | None = None,
               forced: torch.Tensor | None = None, steps: int = 60, ramp: float = 2 / 3, rho: float = 0.1,
               growth: float = 1.3, every: int = 3, rhs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, keep)``: ``weight`` (``[rows, cols]``) pruned by gradual ADMM and compensated.

    As :func:`.reconstruct.sparsegpt`: ``count`` prunes that many entries (an int over the matrix, or a
    ``[rows]`` tensor per row), or ``n_of_m`` prunes ``M - N`` of every ``M`` consecutive columns;
    ``forced`` entries are pruned in any case. The sparsity reaches its target after ``ramp`` of the
    ``steps``. ``H`` is normalised to a unit mean diagonal and damped by ``damp``, so ``rho`` is relative.
    """
    if (count is None) == (n_of_m is None):
        raise ValueError("admm_prune: give count or n_of_m")
    rows, cols = weight.shape
    H, scale = prepared_gram(gram, torch.float64)
    H /= scale
    H.diagonal().add_(damp)
    evals, Q = (t.to(torch.float32) for t in torch.linalg.eigh(H))
    H = H.to(torch.float32)
    saliency = H.diagonal()
    W0 = weight.detach().to(torch.float32)
    target = W0 @ H if rhs is None else (rhs.to(torch.float64) / scale).to(torch.float32) + damp * W0
    Z, U = W0.clone(), torch.zeros_like(W0)
    ramp_steps = min(steps, max(1, round(ramp * steps)))
    keep = torch.ones_like(W0, dtype=torch.bool)
    for step in range(steps):
        if step and step % every == 0:
            rho *= growth
        W = ((target + rho * (Z - U)) @ Q / (evals + rho)) @ Q.T
        V = W + U
        share = 1 - (1 - min(1.0, (step + 1) / ramp_steps)) ** 3
        keep = _keep(V.pow(2) * saliency, share, count, n_of_m, forced)
        Z = V * keep
        U += W - Z
    return exact_update(Z, W0, keep, gram, damp=damp, rhs=rhs).to(weight.dtype), keep  # the last step's share is 1


def _keep(score: torch.Tensor, share: float, count: int | torch.Tensor | None,
          n_of_m: tuple[int, int] | None, forced: torch.Tensor | None) -> torch.Tensor:
    """Keep-mask pruning ``share`` of the final count (per row, per tensor or per N:M group), the lowest
    scores first; ``forced`` entries go first and are never kept."""
    rows, cols = score.shape
    if forced is not None:
        score = score.masked_fill(forced, -1.0)
    if n_of_m is not None:
        n, m = n_of_m
        groups = score.reshape(rows, cols // m, m)
        keep = torch.ones_like(groups, dtype=torch.bool)
        drop = round(share * (m - n))
        if drop:
            keep.scatter_(2, groups.topk(drop, dim=2, largest=False).indices, False)
        keep = keep.reshape(rows, cols)
    elif isinstance(count, torch.Tensor):
        keep = prune_lowest(score, (count.to(torch.float64) * share).round().long())
    else:
        keep = prune_lowest(score.reshape(1, -1), round(int(count) * share)).reshape(rows, cols)
    return keep if forced is None else keep & ~forced
