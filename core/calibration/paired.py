"""Paired calibration statistics: what a layer of the compressed model should output to undo the drift so far.

Sequential compression calibrates block ``i`` on the activations the compressed blocks ``0 .. i-1``
produce. Fitting each layer to its *own* outputs on those inputs (SparseGPT) keeps every layer's error
small but leaves the drift already in its inputs alone. With two :class:`~.blocks.BlockStream` side by
side, one through the dense model and one through the compressed model, each layer's inputs come in
pairs, token by token, and three targets are possible:

- ``layer``: ``W x'`` (its own output on the compressed inputs ``x'``);
- ``dense``: ``W x`` (the dense model's output of this layer; asymmetric calibration, as in GPTAQ,
  Li et al. 2025), which also undoes the drift of the inputs;
- ``stream``: for a layer whose output is *added* to the residual stream (an attention output or
  the last MLP projection), ``W x' + (s - s')`` where ``s`` and ``s'`` are the dense and compressed
  values of that sum: the layer then also takes out the drift the residual carries around it. Other
  layers get the ``dense`` target.

The sum a layer feeds is found by probing, not by name (:func:`sum_points`): a small random change of
the layer's output must come out unchanged at the input of a normalisation layer of the block (post-LN
transformers such as BERT) or at the block's output (pre-LN ones such as GPT-2 and Llama).

Every target is a least-squares problem ``min ||T - W' X'||`` over the compressed inputs, so a method
needs only the Gram matrix ``X'^T X'`` and ``T X'^T``: :class:`PairedStats` keeps them in float64 and
:meth:`PairedStats.rhs` builds ``T X'^T`` for a weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from ..batches import first_tensor
from ..measure import eval_mode
from .blocks import BlockStream
from .shares import sum_over_ranks
from .tokens import feature_rows

Match = Literal["layer", "dense", "stream"]
BLOCK_OUTPUT = ""  # the sum point that is the block's own output


@dataclass
class PairedStats:
    """One layer's statistics over the calibration tokens (float64, rows = real tokens only).

    ``gram`` is ``X'^T X'`` of the compressed inputs; ``cross`` is ``X^T X'`` (dense by compressed
    inputs), or ``X'^T X'`` again where the target is the layer's own output; ``drift`` (``[out, in]``)
    is ``sum (s - s') x'^T`` for a ``stream`` target, else None.
    """

    gram: torch.Tensor
    cross: torch.Tensor
    drift: torch.Tensor | None = None

    def rhs(self, weight: torch.Tensor) -> torch.Tensor:
        """``T X'^T`` for ``weight`` (``[out, in]``): the right-hand side of ``W' (X'^T X') = T X'^T``."""
        out = weight.to(self.cross) @ self.cross
        return out if self.drift is None else out + self.drift

    def add(self, other: "PairedStats") -> None:
        self.gram += other.gram
        self.cross += other.cross
        if self.drift is not None and other.drift is not None:
            self.drift += other.drift


class _Inputs:
    """Forward pre-hooks keeping the input of each watched layer for the batch running now."""

    def __init__(self, block: nn.Module, names: list[str]) -> None:
        self.modules = {name: block.get_submodule(name) for name in names}
        self.seen: dict[str, torch.Tensor] = {}
        self.order: list[tuple[str, int]] = []
        self.handles: list[Any] = []

    def __enter__(self) -> "_Inputs":
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in self.seen:
                self.order.append((name, args[0].data_ptr()))
            self.seen[name] = args[0].detach()
        return hook


def _norms(block: nn.Module) -> dict[str, nn.Module]:
    """The block's normalisation layers (LayerNorm, RMSNorm, ... by class name)."""
    return {name: m for name, m in block.named_modules() if name and "norm" in type(m).__name__.lower()}


class _Points:
    """Hooks keeping the value at every candidate sum point: each norm layer's input and the block output."""

    def __init__(self, block: nn.Module, points: list[str] | None = None) -> None:
        self.block = block
        norms = _norms(block)
        self.norms = norms if points is None else {p: norms[p] for p in points if p != BLOCK_OUTPUT}
        self.values: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles: list[Any] = []

    def _keep(self, point: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if point not in self.values:
                self.order.append(point)
            self.values[point] = value.detach()

    def __enter__(self) -> "_Points":
        for name, module in self.norms.items():
            self.handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: self._keep(name, args[0] if args else None)))
        self.handles.append(self.block.register_forward_hook(
            lambda m, args, out: self._keep(BLOCK_OUTPUT, first_tensor(out))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _call(block: nn.Module, inputs: tuple[list[Any], dict[str, Any]]) -> None:
    args, kwargs = inputs
    block(*args, **kwargs)


def layer_groups(block: nn.Module, names: list[str], inputs: tuple[list[Any], dict[str, Any]]) -> list[list[str]]:
    """``names`` (layers of ``block``) in the order one batch runs them, consecutive layers fed the very
    same input tensor grouped (attention's query, key and value); layers that never run are left out."""
    with eval_mode(block), torch.no_grad(), _Inputs(block, names) as seen:
        _call(block, inputs)
    groups: list[list[str]] = []
    last = None
    for name, pointer in seen.order:
        if groups and pointer == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = pointer
    return groups


def sum_points(block: nn.Module, names: list[str], inputs: tuple[list[Any], dict[str, Any]]) -> dict[str, str]:
    """For each layer of ``names`` whose output is added, as is, into a sum that a norm layer of the block
    takes (or the block returns): that point (a norm layer's name, or ``BLOCK_OUTPUT``). Found by adding
    a small random change to the layer's output on one batch and looking for it, unchanged, downstream."""
    found: dict[str, str] = {}
    with eval_mode(block), torch.no_grad():
        with _Points(block) as clean:
            _call(block, inputs)
        generator = torch.Generator().manual_seed(0)
        for name in names:
            module = block.get_submodule(name)
            change: dict[str, torch.Tensor] = {}

            def nudge(m: nn.Module, args: tuple, out: Any) -> Any:
                if not isinstance(out, torch.Tensor) or "e" in change:
                    return None
                noise = torch.randn(out.shape, generator=generator).to(out) * (1e-2 * float(out.std()) + 1e-6)
                change["e"] = noise
                return out + noise

            handle = module.register_forward_hook(nudge)
            try:
                with _Points(block) as probed:
                    _call(block, inputs)
            finally:
                handle.remove()
            if "e" not in change:
                continue
            noise = change["e"]
            for point in probed.order:
                before, after = clean.values.get(point), probed.values[point]
                if before is None or after.shape != noise.shape:
                    continue
                difference = after - before
                if bool(torch.allclose(difference, noise, rtol=1e-3, atol=1e-3 * float(noise.abs().max()))):
                    found[name] = point
                    break
    return found


def paired_stats(block: nn.Module, reference: nn.Module, names: list[str], compressed: BlockStream,
                 dense: BlockStream, match: Match, points: dict[str, str], sharded: bool = False
                 ) -> dict[str, PairedStats]:
    """Statistics of the layers ``names`` of ``block`` (as compressed so far) over every calibration batch,
    paired token by token with the same layers of ``reference`` (the block before compression) run on the
    dense stream. ``points`` (from :func:`sum_points`) gives the sums ``stream`` targets correct. With
    ``sharded``, every statistic is summed over the ranks (each rank ran its own batches)."""
    stats: dict[str, PairedStats] = {}
    used = sorted({points[n] for n in names if n in points and match == "stream"})
    with eval_mode(block), eval_mode(reference), torch.no_grad():
        for b in range(len(compressed.inputs)):
            mask = compressed.masks[b]
            with _Inputs(reference, names) as ref_in, _Points(reference, used) as ref_sum:
                if match != "layer":
                    _call(reference, dense.batch_inputs(b))
            with _Inputs(block, names) as own_in, _Points(block, used) as own_sum:
                _call(block, compressed.batch_inputs(b))
            for name in names:
                x_own = own_in.seen.get(name)
                if x_own is None:
                    continue
                x_own = feature_rows(x_own, mask).double()
                gram = x_own.t() @ x_own
                drift = None
                point = points.get(name) if match == "stream" else None
                if point is not None and point in own_sum.values and point in ref_sum.values:
                    delta = feature_rows(ref_sum.values[point] - own_sum.values[point], mask).double()
                    cross, drift = gram, delta.t() @ x_own
                elif match != "layer" and name in ref_in.seen:
                    cross = feature_rows(ref_in.seen[name], mask).double().t() @ x_own
                else:
                    cross = gram
                batch = PairedStats(gram, cross.clone() if cross is gram else cross, drift)
                if name in stats:
                    stats[name].add(batch)
                else:
                    stats[name] = batch
    if sharded:
        for name in names:
            entry = stats.get(name)
            sum_over_ranks([] if entry is None else [entry.gram, entry.cross, entry.drift])
    return stats


class PairedBlocks:
    """The dense and the compressed model's calibration activations, advanced block by block together.

    :meth:`open` captures the first block's inputs twice; :meth:`walk` yields, for each block, a copy
    of it as it was before compression (``reference``); the caller compresses the block in place, and
    the walk then advances the dense stream through the reference and the compressed stream through
    the compressed block. Memory: the model, one block copy and two copies of one block's activations,
    which together stay under ``$TORCHSLIM_CALIBRATION_MB`` (the rest spilled to disk as
    :class:`~.blocks.BlockStream` does).
    """

    def __init__(self, dense: BlockStream, compressed: BlockStream) -> None:
        self.dense, self.compressed = dense, compressed
        self._dense_ahead = False  # the dense stream already holds the current block's outputs

    @classmethod
    def open(cls, model: nn.Module, batches: list[Any]) -> "PairedBlocks | None":
        compressed = BlockStream.open(model, batches, share=0.5)  # the two streams split the memory limit
        if compressed is None:
            return None
        return cls(BlockStream.open(model, batches, share=0.5), compressed)

    @property
    def blocks(self) -> list[nn.Module]:
        return self.compressed.blocks

    def walk(self, copy_block: Callable[[nn.Module], nn.Module] = copy.deepcopy) -> Iterator[tuple[int, nn.Module]]:
        """``(index, reference)`` per block; advance both streams once the caller has compressed it."""
        for index, block in enumerate(self.blocks):
            reference = copy_block(block)
            self._dense_ahead = False
            yield index, reference
            if index < len(self.blocks) - 1:
                if not self._dense_ahead:
                    self.dense.run(index, advance=True, block=reference)
                self.compressed.run(index, advance=True)
            del reference

    def dense_outputs(self, index: int, reference: nn.Module) -> BlockStream:
        """The dense stream advanced through ``reference`` (block ``index`` before compression): its hidden
        states are then that block's dense outputs, computed once; the walk does not advance it again.
        Only once every statistic on the dense *inputs* of the block has been taken."""
        if not self._dense_ahead:
            self.dense.run(index, advance=True, block=reference)
            self._dense_ahead = True
        return self.dense
