"""Timing factor candidates on each layer's real input: activations, trials, latency models, the keep gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from torchslim.batches import as_inputs, call_model
from torchslim.latency_table import LatencyTable
from torchslim.measure import eval_mode, mha_fastpath_disabled
from torchslim.runtime import deploy

from .layer import Layer, trial_key
from .options import SVDOptions
from .spectra import factorize


class Activations:
    """Each targeted layer's real input and output, recomputed by a forward pass when needed.

    Keeping every layer's activations from the first pass would cost as much memory as the model's
    weights (a ResNet-50 on one 224x224 image: about 0.9x); instead :meth:`visit` runs the example
    inputs again and hands each wanted layer its activations during the pass, one layer at a time.
    """

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self.inputs = as_inputs(example_inputs)

    def visit(self, layers: list["Layer"], use: Callable[["Layer", torch.Tensor, torch.Tensor], None]) -> None:
        """Call ``use(layer, x, y)`` with the input and output of each layer's first call, as captured.

        The pass runs in eval mode without gradients and with the fused attention kernels off, as the
        capturing pass did. A layer that does not run this time (data-dependent control flow) gets a
        random input of its recorded shape.
        """
        wanted = {id(layer.module): layer for layer in layers}
        done: set[str] = set()

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            layer = wanted.get(id(module))
            if layer is not None and layer.name not in done:
                done.add(layer.name)
                use(layer, args[0].detach(), output.detach())

        handles = [layer.module.register_forward_hook(hook) for layer in layers]
        try:
            with eval_mode(self.model), torch.no_grad(), mha_fastpath_disabled():
                call_model(self.model, self.inputs)
        finally:
            for handle in handles:
                handle.remove()
        for layer in layers:
            if layer.name not in done:
                weight = layer.module.weight
                x = torch.randn(layer.in_shape, dtype=weight.dtype, device=weight.device)
                with eval_mode(layer.module), torch.no_grad():
                    use(layer, x, layer.module(x))


@dataclass
class Trials:
    """Factor modules built and timed so far, and the layers kept because their factors were slow."""

    activations: Activations
    built: dict[tuple[str, str, int], nn.Module] = field(default_factory=dict)
    timings: dict[tuple[str, str, int], tuple[float, float]] = field(default_factory=dict)
    slow: dict[str, str] = field(default_factory=dict)
    floors: dict[tuple[str, str], int] = field(default_factory=dict)
    time_models: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    table: LatencyTable | None = None
    runtime: str | None = None

    def time_pair(self, before: nn.Module, after: nn.Module, x: torch.Tensor, runs: int) -> tuple[float, float]:
        """``(before_ms, after_ms)`` from this machine's latency table when it has them, else measured.

        With a ``runtime`` both modules are deployed there first (see :func:`torchslim.runtime.deploy`),
        so the times are those of the runtime the model will ship to.
        """
        def measure() -> tuple[float, float]:
            if self.runtime is None:
                return time_pair(before, after, x, runs)
            return time_pair(deploy(before, (x,), self.runtime), deploy(after, (x,), self.runtime), x, runs)

        if self.table is None:
            return measure()
        return self.table.pair(before, after, x, measure, runtime=self.runtime)


LATENCY_ROUNDS = 8


def time_models(layers: list[Layer], opts: "SVDOptions", trial: "Trials") -> None:
    """Time each layer's factors at two ranks on its real input: ``(original, fixed, per rank)`` in ms.

    The probes sit at a quarter and three fifths of the largest rank that still saves MACs, around
    where a 2x budget lands; between and beyond them the time is taken as linear in the rank (the
    factor convs' MACs are). A layer with no rank below break-even gets no model (it has no cut).
    """
    step = max(1, opts.rank_multiple)

    def probe(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> None:
        top = min(layer.spectra[layer.form].full_rank - 1, break_even(layer))
        ranks = sorted({max(step, top // 4 // step * step), max(step, top * 3 // 5 // step * step)})
        ranks = [rank for rank in ranks if rank <= top] or [max(1, top)]
        measured = []
        for rank in ranks:
            before, after = trial.time_pair(layer.module, factorize(layer.module, layer.spectra[layer.form], rank),
                                             x, opts.latency_runs)
            trial.timings[(layer.name, layer.form, rank)] = (before, after)
            measured.append((rank, before, after))
        original = min(before for _, before, _ in measured)
        if len(measured) == 1:
            (rank, _, after), = measured
            trial.time_models[(layer.name, layer.form)] = (original, 0.0, after / rank)
            return
        (r1, _, t1), (r2, _, t2) = measured
        per_rank = (t2 - t1) / (r2 - r1)
        trial.time_models[(layer.name, layer.form)] = (original, t1 - per_rank * r1, per_rank)

    missing = [layer for layer in layers if (layer.name, layer.form) not in trial.time_models
               and break_even(layer) >= 1]
    if missing:
        trial.activations.visit(missing, probe)

def check_latency(layers: list[Layer], opts: "SVDOptions",
                   trial: "Trials") -> dict[str, str]:
    """Time each layer's candidate factors; return the layers not fast enough, with the reason."""
    if not opts.measure_latency:
        return {}
    failed = {}
    timed = [layer for layer in layers if layer.rank is not None and layer.name not in trial.slow]
    for layer in timed:
        key = trial_key(layer)
        if key not in trial.built:
            trial.built[key] = factorize(layer.module, layer.spectra[layer.form], layer.rank)

    def time_layer(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> None:
        key = trial_key(layer)
        trial.timings[key] = trial.time_pair(layer.module, trial.built[key], x, opts.latency_runs)

    trial.activations.visit([layer for layer in timed if trial_key(layer) not in trial.timings], time_layer)
    for layer in timed:
        key = trial_key(layer)
        before, after = trial.timings[key]
        cut = layer.macs / max(1, layer.factor_macs(layer.form, layer.rank))
        if before < opts.min_speedup * after or before < opts.min_realized * cut * after:
            failed[layer.name] = (
                f"kept original: rank-{layer.rank} {layer.form} factors cut MACs {cut:.2f}x but ran "
                f"{before / after:.2f}x as fast (min_speedup={opts.min_speedup}, "
                f"min_realized={opts.min_realized})")
    return failed


def break_even(layer: Layer) -> int:
    """The largest rank of ``layer.form`` whose factors still save MACs."""
    return -(-layer.macs // layer.cost_per_rank(layer.form)) - 1


def raised_floor(layer: Layer, multiple: int) -> int | None:
    """The rank floor after ``layer`` was too slow at ``layer.rank``: halfway to break-even, or None."""
    limit = break_even(layer)
    step = max(1, multiple)
    floor = layer.rank + max(step, (limit - layer.rank) // 2)
    floor = -(-floor // step) * step
    return floor if floor <= limit else None


def time_pair(before: nn.Module, after: nn.Module, x: torch.Tensor, runs: int) -> tuple[float, float]:
    """Best-of-``runs`` ms of ``before`` and ``after`` on ``x``, one run of each in turn.

    Interleaving exposes both to the same machine load; the minimum is the estimate least disturbed
    by other processes (the layer's own cost), which is what the keep-or-revert decision needs.
    measure_latency's median of back-to-back runs cannot interleave, hence this small loop.
    """
    times: tuple[list[float], list[float]] = ([], [])
    with eval_mode(before), eval_mode(after), torch.inference_mode():
        for module in (before, after):
            module(x)
            module(x)
        for _ in range(runs):
            for module, bucket in ((before, times[0]), (after, times[1])):
                start = time.perf_counter()
                module(x)
                bucket.append(time.perf_counter() - start)
    return min(times[0]) * 1000.0, min(times[1]) * 1000.0
