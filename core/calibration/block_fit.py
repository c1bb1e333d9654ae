"""Block output fitting: gradient steps that make one compressed block reproduce its dense outputs.

A closed-form refit (least squares per layer) matches each layer's own output; the block's
nonlinearities (softmax attention, GELU, normalisation) are left to chance. :func:`fit_block_outputs`
takes the parameters a method changed inside block ``index`` of a :class:`~.paired.PairedBlocks` walk
and runs Adam over the calibration batches on the relative squared error between the block's output
on the compressed stream's inputs and the dense block's output on the dense stream's inputs, real
tokens only. That target is the residual stream as the dense model has it, so the block also takes
out the drift its inputs carry (BRECQ-style block reconstruction, Li et al. 2021, here on calibration
text only: no labels and no task loss).

The targets are computed once per block: the dense stream is advanced through the dense block
(:meth:`~.paired.PairedBlocks.dense_outputs`) and its hidden states read as the targets, which is the
advance the walk makes next anyway. Memory: the two streams the walk already holds, plus one batch's
activations and gradients. The batch order is seeded, so every run and every rank takes the same
steps. Call it once the block's statistics on the dense inputs have been taken (the closed-form refit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..batches import first_tensor
from ..measure import eval_mode
from .blocks import BlockStream
from .paired import PairedBlocks
from .tokens import feature_rows


@contextmanager
def _training_only(block: nn.Module, parameters: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``parameters`` alone (the block's other parameters get none); their ``requires_grad``
    flags restored and the fitted parameters' gradients dropped on exit."""
    chosen = {id(p) for p in parameters}
    before = {p: p.requires_grad for p in block.parameters()}
    try:
        for p in block.parameters():
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)
        for p in parameters:
            p.grad = None


def _relative_error(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out, target = feature_rows(out, mask), feature_rows(target, mask)
    return (out - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30)


def block_output_error(paired: PairedBlocks, index: int, reference: nn.Module) -> float:
    """Mean over the calibration batches of the block's relative squared output error against ``reference``
    (the dense block) on the dense stream's inputs."""
    block, targets = paired.blocks[index], paired.dense_outputs(index, reference)
    total = 0.0
    with eval_mode(block), torch.no_grad():
        for b in range(len(paired.compressed.inputs)):
            total += float(_error_on_batch(paired, block, targets, b))
    return total / max(1, len(paired.compressed.inputs))


def _error_on_batch(paired: PairedBlocks, block: nn.Module, targets: BlockStream, b: int) -> torch.Tensor:
    args, kwargs = paired.compressed.batch_inputs(b)
    return _relative_error(first_tensor(block(*args, **kwargs)), targets.hidden.get(b), paired.compressed.masks[b])


def fit_block_outputs(paired: PairedBlocks, index: int, reference: nn.Module, parameters: Sequence[nn.Parameter],
                      epochs: int, lr: float, seed: int = 0) -> None:
    """``epochs`` passes of Adam (learning rate ``lr``, one step per calibration batch, in a seeded order)
    over ``parameters`` of block ``index``, fitting its outputs on the compressed stream to ``reference``'s
    (the dense block) on the dense stream. Dropout stays off (eval mode)."""
    parameters = list(parameters)
    if not parameters or epochs <= 0:
        return
    block, targets = paired.blocks[index], paired.dense_outputs(index, reference)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    order = torch.Generator().manual_seed(seed + index)
    count = len(paired.compressed.inputs)
    with eval_mode(block), _training_only(block, parameters), torch.enable_grad():
        for _ in range(epochs):
            for b in torch.randperm(count, generator=order).tolist():
                loss = _error_on_batch(paired, block, targets, b)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
