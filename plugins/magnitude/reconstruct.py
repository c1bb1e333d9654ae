"""Update the kept weights of a pruned layer so its outputs on calibration data change least.

For a layer ``y = W x`` with input Gram matrix ``H = X^T X`` and a keep-mask ``M``, each output row
``w`` should become ``w'`` (zero where ``M`` prunes) minimising ``(w - w')^T H (w - w')``. We use the
column-wise Optimal Brain Surgeon update of SparseGPT (Frantar & Alistarh, 2023): walk the columns left
to right; zeroing a pruned entry spreads its error over the columns not yet visited in proportion to
the Cholesky factor of ``H^-1``. It runs on all rows at once, one Python step per *column* (never per
element), in blocks so most work is matrix products: ``O(cols^3 + rows * cols^2)`` per layer.
"""

from __future__ import annotations

import torch


def inverse_hessian_factor(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; raises the damping until it works.

    Inputs that never fire (zero diagonal) get a unit diagonal so ``H`` stays invertible; their
    weights then receive no error, which is right because they never affect the output.
    """
    H = gram.double().clone()
    diag = H.diagonal()
    dead = diag <= 0
    diag[dead] = 1.0
    scale = float(diag.mean())
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


def sparsegpt_update(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor, damp: float = 0.01,
                     block: int = 128) -> torch.Tensor:
    """The weights ``weight`` (``[rows, cols]``) with pruned entries zeroed and the rest compensated.

    ``keep`` is the boolean keep-mask of the same shape, ``gram`` the ``[cols, cols]`` input Gram
    matrix. Returns a new tensor in ``weight``'s dtype; entries where ``keep`` is False are exactly 0.
    """
    rows, cols = weight.shape
    U = inverse_hessian_factor(gram, damp).to(torch.float32)
    W = weight.detach().to(torch.float32).clone()
    prune = ~keep
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W1 = W[:, start:end].clone()
        errors = torch.zeros_like(W1)
        U1 = U[start:end, start:end]
        P1 = prune[:, start:end]
        for i in range(end - start):
            column = W1[:, i]
            err = torch.where(P1[:, i], column, torch.zeros_like(column)) / U1[i, i]
            # spread the error of the zeroed entries over the remaining columns of this block
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            errors[:, i] = err
        W1.masked_fill_(P1, 0.0)
        W[:, start:end] = W1
        if end < cols:
            W[:, end:] -= errors @ U[start:end, end:]
    W.masked_fill_(prune, 0.0)
    return W.to(weight.dtype)
