"""Built-in ``magnitude`` pruning: zero the least important weights behind masks that survive training.

Importance is ``|w|`` (``criterion: weight``) or ``|w|`` times the L2 norm of the weight's input over
calibration batches (``criterion: activation``, Wanda; Sun et al. 2023). Weights are ranked per layer,
per output row, or globally, and removed one by one (unstructured), ``N`` of every ``M`` along the
input dimension (``pattern: "2:4"``), or as whole output rows/channels (``pattern: structured``).
``reconstruct: true`` then updates the kept weights by least squares on the calibration inputs
(SparseGPT's column-wise update; Frantar & Alistarh 2023). ``rounds > 1`` reaches the final sparsity
gradually on the cubic schedule of Zhu & Gupta (2017), fine-tuning with ``between`` after each round.

Masks are :mod:`torchslim.masks` parametrizations, so zeros hold through any later training;
:func:`torchslim.masks.finalize` bakes them in. Recipe step::

    - compress: {method: magnitude, sparsity: 0.9, scope: global, rounds: 4,
                 between: {method: sgd, epochs: 1}}

Python::

    from torchslim.plugins.magnitude import prune
    result = prune(model, sparsity=0.5, criterion="activation", calibration=[(x,)])
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.context import RunContext
from torchslim.errors import ModelError, RecipeError
from torchslim.masks import Mask, apply_mask, get_mask
from torchslim.recipe import Targets, format_validation_error

from . import _pruning_select as select
from ._pruning_calibration import InputStats, collect_input_stats, gram_supported, merge_stats
from ._pruning_reconstruct import sparsegpt_update
from ._pruning_targets import DEFAULT_TYPES, PruneTarget, check_finite, collect_targets

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class MagnitudeOptions(BaseModel):
    """Options of the ``magnitude`` compress method."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(
        0.5, ge=0, lt=1, json_schema_extra={"strength": True},
        description="fraction of the targeted weights to zero, in [0, 1); 0 changes nothing. With "
                    "pattern 'structured' the fraction of output rows/channels. Ignored when 'threshold' is set.",
    )
    threshold: float | None = Field(
        None, ge=0,
        description="zero every weight whose score is below this value instead of a fixed fraction "
                    "(score = |w|, or |w| x input norm with criterion 'activation'; row norm when structured)",
    )
    scope: Literal["layer", "global", "row"] = Field(
        "layer",
        description="where weights compete: 'layer' (each tensor pruned to the sparsity), 'global' (all "
                    "targeted weights ranked together) or 'row' (each output row separately, as Wanda)",
    )
    pattern: str = Field(
        "unstructured",
        description="'unstructured' (single weights), 'N:M' such as '2:4' (keep N of every M consecutive "
                    "weights along the input dimension) or 'structured' (whole output rows/channels)",
    )
    norm: Literal["l1", "l2"] = Field("l2", description="row norm ranking output rows when pattern is 'structured'")
    criterion: Literal["weight", "activation"] = Field(
        "weight",
        description="'weight': |w|; 'activation': |w| times the L2 norm of its input over calibration "
                    "batches (Wanda); Linear and Conv layers, others fall back to |w|",
    )
    reconstruct: bool = Field(
        False,
        description="after choosing the mask, update the kept weights by least squares on the calibration "
                    "inputs (SparseGPT update); Linear, Conv1d and ungrouped Conv2d layers",
    )
    damp: float = Field(0.01, gt=0, le=10,
                        description="reconstruct: ridge added to the input Gram matrix, relative to its mean diagonal")
    sequential: bool = Field(
        True,
        description="reconstruct: prune layer by layer in forward order, each calibrated on the outputs of "
                    "the layers already pruned (as SparseGPT); off: all layers from the unpruned model's inputs",
    )
    calibration_batches: int = Field(8, ge=1, description="training batches used for activation statistics")
    min_sparsity: float = Field(0.0, ge=0, lt=1, description="lowest sparsity any single tensor may end with")
    max_sparsity: float = Field(1.0, gt=0, le=1, description="highest sparsity any single tensor may end with")
    rounds: int = Field(1, ge=1, le=100,
                        description="prune in this many rounds on the cubic schedule of Zhu & Gupta (1 = one-shot)")
    between: dict[str, Any] | None = Field(
        None,
        description="fine-tune step run after every round but the last, e.g. {method: sgd, epochs: 1}",
    )
    include_bias: bool = Field(False, description="prune biases too (structured: the biases of removed rows)")
    allow_empty_layers: bool = Field(
        False,
        description="let a tensor lose every weight; otherwise sparsity targets keep at least one weight "
                    "per tensor (per row with scope 'row') and a threshold that empties a tensor is an error",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("unstructured", "structured"):
            return value
        match = _NM.match(value)
        if match and 0 < int(match.group(1)) < int(match.group(2)):
            return f"{int(match.group(1))}:{int(match.group(2))}"
        raise ValueError(f"pattern={value!r} must be 'unstructured', 'structured' or 'N:M' with 0 < N < M (e.g. '2:4')")

    @field_validator("between")
    @classmethod
    def _between(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        body = value.get("finetune", value) if len(value) == 1 else value
        if not isinstance(body, dict) or "method" not in body:
            raise ValueError("between must be a fine-tune step such as {method: sgd, epochs: 1}")
        return dict(body)

    @model_validator(mode="after")
    def _consistent(self) -> "MagnitudeOptions":
        given = self.model_fields_set
        if self.threshold is not None and "sparsity" in given:
            raise ValueError("give either sparsity or threshold, not both")
        if self.min_sparsity > self.max_sparsity:
            raise ValueError(f"min_sparsity={self.min_sparsity} is above max_sparsity={self.max_sparsity}")
        nm = self.n_of_m
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.threshold is not None:
                raise ValueError(f"pattern {self.pattern} fixes the sparsity; remove threshold")
            if "sparsity" in given and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(f"pattern {self.pattern} means sparsity {implied:g}; remove sparsity or set it to that")
            if self.rounds > 1:
                raise ValueError(f"pattern {self.pattern} is reached in one step; rounds must be 1")
        if self.pattern == "structured" and self.scope == "row":
            raise ValueError("scope 'row' ranks weights inside a row; with pattern 'structured' use 'layer' or 'global'")
        if self.rounds > 1 and self.threshold is not None:
            raise ValueError("rounds > 1 follows a sparsity schedule; use sparsity instead of threshold")
        if self.between is not None and self.rounds == 1:
            raise ValueError("between runs between rounds; set rounds > 1 or remove it")
        return self

    @property
    def n_of_m(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else None."""
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def needs_calibration(self) -> bool:
        return self.criterion == "activation" or self.reconstruct


class MagnitudePruning:
    """The ``magnitude`` compress method (see the module docstring)."""

    name = "magnitude"
    Options = MagnitudeOptions
    default_types = DEFAULT_TYPES

    @torchslim.hookimpl
    def compress(self, model: nn.Module, step: Any, context: RunContext) -> torchslim.StepResult:
        return prune(model, step.options, targets=step.targets, context=context)


# ------------------------------------------------------------------------------------------ API

def cubic_schedule(final: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``rounds`` rounds: ``s_f + (s_i - s_f) (1 - r/R)^3`` (Zhu & Gupta, 2017)."""
    initial = min(initial, final)
    return [final + (initial - final) * (1 - r / rounds) ** 3 for r in range(1, rounds + 1)]


def prune(
    model: nn.Module,
    options: MagnitudeOptions | dict[str, Any] | None = None,
    *,
    targets: Targets | dict[str, Any] | None = None,
    context: RunContext | None = None,
    calibration: Iterable[Any] | None = None,
    **kwargs: Any,
) -> torchslim.StepResult:
    """Prune ``model`` in place as the ``magnitude`` method does and return a :class:`StepResult`.

    ``options`` (or keyword arguments) are :class:`MagnitudeOptions`; ``targets`` selects modules as
    in a recipe. Calibration inputs come from ``calibration`` (an iterable of model inputs) or else
    ``context.calibration_batches``. Everything is checked and every mask computed before the model is
    changed (with sequential reconstruction, tensors already changed are restored on failure), so a
    failure leaves the model as it was, fine-tuning between rounds aside.
    """
    opts = _options(options, kwargs)
    targets = Targets.model_validate(targets) if isinstance(targets, dict) else targets
    context = context or RunContext()
    found, skipped = collect_targets(model, targets, DEFAULT_TYPES, include_bias=opts.include_bias)
    if not found:
        raise ModelError(
            "magnitude: no weight tensor to prune among the targeted modules; check 'targets' "
            "(include/exclude globs, types)"
        )
    check_finite(found)
    before = {t.name: _effective_zeros(t)[0] for t in found}
    total_before = sum(before.values()) / max(1, sum(t.stored.numel() for t in found))
    if opts.threshold is not None or opts.n_of_m is not None:
        schedule: list[float | None] = [None]
    else:
        schedule = list(cubic_schedule(opts.sparsity, opts.rounds, total_before))
    notes: dict[str, dict[str, Any]] = {}
    exact = True
    if opts.sparsity > 0 or opts.threshold is not None or opts.n_of_m is not None:
        for index, fraction in enumerate(schedule, start=1):
            if index > 1:
                if opts.between is not None:
                    model = _finetune(model, opts.between, context)
                    found, _ = collect_targets(model, targets, DEFAULT_TYPES, include_bias=opts.include_bias)
                check_finite(found)
            round_skipped, round_notes, round_exact = _prune_round(model, found, opts, fraction, context, calibration)
            notes.update(round_notes)
            exact = exact and round_exact
            if index == len(schedule):
                skipped += round_skipped
    report, zeros, total = [], 0, 0
    for target in found:
        n_zero, shape = _effective_zeros(target)
        numel = shape.numel()
        zeros, total = zeros + n_zero, total + numel
        note = notes.get(target.name, {})
        report.append({
            "layer": target.module_name,
            "tensor": target.param_name,
            "shape": list(shape),
            "sparsity_before": round(before.get(target.name, 0) / max(1, numel), 6),
            "sparsity_after": round(n_zero / max(1, numel), 6),
            "kept": numel - n_zero,
            "criterion": note.get("criterion", opts.criterion if opts.sparsity > 0 else "-"),
            "reconstructed": note.get("reconstructed", False),
        })
    info = {
        "pattern": opts.pattern,
        "scope": opts.scope,
        "criterion": opts.criterion,
        "target_sparsity": None if opts.threshold is not None else
        (1 - opts.n_of_m[0] / opts.n_of_m[1] if opts.n_of_m else opts.sparsity),
        "threshold": opts.threshold,
        "sparsity_before": round(total_before, 6),
        "sparsity": round(zeros / max(1, total), 6),
        "schedule": [round(s, 6) for s in schedule if s is not None],
        "pruned_tensors": len(found),
        "bounds_met_exactly": exact,
    }
    return torchslim.StepResult(model=model, report=report, skipped=skipped, info=info)


def _options(options: MagnitudeOptions | dict[str, Any] | None, kwargs: dict[str, Any]) -> MagnitudeOptions:
    if isinstance(options, MagnitudeOptions) and not kwargs:
        return options
    raw = options.model_dump(exclude_unset=True) if isinstance(options, MagnitudeOptions) else dict(options or {})
    raw.update(kwargs)
    try:
        return MagnitudeOptions.model_validate(raw)
    except ValidationError as exc:
        text = format_validation_error(exc, raw, prefix="magnitude")
        raise RecipeError(text.replace("invalid recipe:\n  ", "")) from None


def _finetune(model: nn.Module, between: dict[str, Any], context: RunContext) -> nn.Module:
    if context.runner is None:
        raise RecipeError(
            "magnitude: 'between' fine-tunes through the engine; run the recipe with torchslim.Engine "
            "(or drop 'between' when calling prune() directly)"
        )
    result = context.run_step(model, {"finetune": dict(between)})
    return result.model if hasattr(result, "model") else result


def _zeros(tensor: torch.Tensor) -> int:
    return tensor.numel() - int(torch.count_nonzero(tensor))


def _effective_zeros(target: PruneTarget) -> tuple[int, torch.Size]:
    """Zeros and shape of ``target`` as its module sees it, without a full-size product for a masked tensor.

    With a single :class:`Mask` on the tensor, ``stored * mask`` is counted a block of rows at a time
    (the same products the parametrization computes); anything else is read through the module.
    """
    mask = get_mask(target.module, target.param_name)
    if mask is None or mask.dim() == 0 or len(target.module.parametrizations[target.param_name]) != 1:
        effective = target.effective()  # a plain parameter is read as is, without a copy
        return _zeros(effective), effective.shape
    stored = target.stored.detach()
    step = max(1, select.CHUNK // max(1, stored[0].numel()))
    kept = sum(int(torch.count_nonzero(stored[i:i + step] * mask[i:i + step])) for i in range(0, stored.shape[0], step))
    return stored.numel() - kept, stored.shape


# ---------------------------------------------------------------------------------- one round

def _prune_round(
    model: nn.Module,
    found: list[PruneTarget],
    opts: MagnitudeOptions,
    fraction: float | None,
    context: RunContext,
    calibration: Iterable[Any] | None,
) -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]], bool]:
    """Prune every target once: score, choose masks, optionally reconstruct, apply.

    Without ``sequential`` reconstruction all masks and weights are computed before anything changes.
    With it, layers go in forward order in groups fed the same input, each calibrated on the outputs
    of the groups already pruned; a failure then restores the tensors already changed. Scores are
    computed layer by layer and dropped (:class:`_Scores`), and a mask is released once its module
    holds it, so the step's own memory stays near the masks' (one byte per weight). Stored values
    are zeroed only once every mask is in place: until then a failure only has to take masks off.
    """
    stats: dict[int, InputStats] = {}
    batches: list[Any] = []
    groups = [found]
    if opts.needs_calibration:
        source = calibration if calibration is not None else context.calibration_batches(opts.calibration_batches)
        batches = list(source)
        stats, trace = collect_input_stats(model, _modules(found), batches, gram=opts.reconstruct)
        if opts.reconstruct and opts.sequential:
            groups = _forward_groups(found, trace)
    notes: dict[str, dict[str, Any]] = {}
    preset: dict[str, torch.Tensor] | None = None
    skipped: list[tuple[str, str]] = []
    exact = True
    if len(groups) > 1 and (opts.scope == "global" and opts.threshold is None and opts.n_of_m is None):
        # one ranking over all layers needs every score now: masks from this pass, weights sequential
        preset, skipped, exact = _select(found, _scores(found, opts, stats, notes), opts, fraction)
    undo = _Undo()
    masked: list[PruneTarget] = []
    try:
        for index, group in enumerate(groups):
            if index > 0:
                expected = {id(m): trace.calls.get(id(m), 1) for m in _modules(group)}
                fresh, _ = collect_input_stats(model, _modules(group), batches, gram=True, stop_after=expected)
                stats.update(fresh)
            scores = _scores(group, opts, stats, notes)
            if preset is not None:
                keep = {t.name: preset[t.name] for t in group if t.name in preset}
            else:
                keep, group_skipped, group_exact = _select(group, scores, opts, fraction)
                skipped += group_skipped
                exact = exact and group_exact
            for target in group:  # earlier masks stay: the new mask only adds zeros
                existing = get_mask(target.module, target.param_name)
                if existing is not None and target.name in keep:
                    keep[target.name] = keep[target.name] & existing.to(keep[target.name].device)
            _check_not_empty(group, keep, opts)
            weights: dict[str, torch.Tensor] = {}
            if opts.reconstruct:
                for target in group:
                    new = _reconstruct(target, keep.get(target.name), stats, opts)
                    if new is not None:
                        weights[target.name] = new
                        notes[target.name]["reconstructed"] = True
            for target in group:
                if target.name in keep and _apply(target, keep.pop(target.name), weights.pop(target.name, None), undo):
                    masked.append(target)
    except BaseException:
        undo.restore()
        raise
    for target in masked:  # the masks hold: make the stored values sparse too
        with torch.no_grad():
            target.stored.mul_(get_mask(target.module, target.param_name))
    return skipped, notes, exact


def _modules(found: list[PruneTarget]) -> list[nn.Module]:
    return [m for t in found if not t.is_bias for _, m, _ in t.holders]


def _forward_groups(found: list[PruneTarget], trace: Any) -> list[list[PruneTarget]]:
    """Targets in forward order, grouped by shared input; never-called ones (and biases) last."""
    position = {key: i for i, key in enumerate(trace.order)}
    keyed, rest = [], []
    for target in found:
        calls = [id(m) for _, m, _ in target.holders if id(m) in position]
        if target.is_bias or not calls:
            rest.append(target)
        else:
            first = min(calls, key=position.__getitem__)
            keyed.append((position[first], trace.group[first], target))
    keyed.sort(key=lambda item: item[0])
    groups: list[list[PruneTarget]] = []
    last = None
    for _, group_id, target in keyed:
        if groups and group_id == last:
            groups[-1].append(target)
        else:
            groups.append([target])
        last = group_id
    if rest:
        groups.append(rest)
    return groups


def _scores(found: list[PruneTarget], opts: MagnitudeOptions, stats: dict[int, InputStats],
            notes: dict[str, dict[str, Any]]) -> "_Scores":
    scores = _Scores(found, opts, stats)
    for target in found:
        notes[target.name] = {"criterion": scores.criteria[target.name], "reconstructed": False}
    return scores


class _Scores(Mapping[str, torch.Tensor]):
    """The importance of every entry of each target, by name, computed when read and never kept.

    Global ranking reads every layer's scores a few times; recomputing ``|w|`` (times the cached
    per-column input norms of the activation criterion) is cheap, while keeping them all would cost
    the size of the weights again. ``criteria`` names the criterion each target actually gets.
    """

    def __init__(self, found: list[PruneTarget], opts: MagnitudeOptions, stats: dict[int, InputStats]) -> None:
        self._targets = {t.name: t for t in found}
        self._stats = stats
        self._scales: dict[str, torch.Tensor | None] = {}
        self.criteria = {t.name: _criterion(t, opts, stats) for t in found}

    def __getitem__(self, name: str) -> torch.Tensor:
        weight = self._targets[name].effective()
        return self._score(name, weight, weight)

    def _score(self, name: str, weight: torch.Tensor, rows: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Scores of ``rows`` (``weight[start:start + len(rows)]``)."""
        score = rows.float().abs()
        if self.criteria[name] != "activation":
            return score
        if name not in self._scales:
            self._scales[name] = _input_scale(self._targets[name], weight, self._stats)
        scale = self._scales[name]
        return score * (scale if scale.shape[0] == 1 else scale[start:start + rows.shape[0]])

    def pieces(self, name: str) -> Iterator[torch.Tensor]:
        """The scores of ``name`` flat and in order, a block of output rows (about ``select.CHUNK``) at a time."""
        weight = self._targets[name].effective()
        if weight.dim() == 0:
            yield self[name].reshape(-1)
            return
        step = max(1, select.CHUNK // max(1, weight[0].numel()))
        for start in range(0, weight.shape[0], step):
            yield self._score(name, weight, weight[start:start + step], start).reshape(-1)

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def reader(self, name: str) -> Callable[[], Iterator[torch.Tensor]]:
        """A zero-argument function yielding the scores of ``name`` afresh, piece by piece, on each call."""
        return lambda: self.pieces(name)


class _Undo:
    """Remembers each tensor's mask (and values, when rewritten) before it changes, to restore on failure."""

    def __init__(self) -> None:
        self.saved: list[tuple[PruneTarget, torch.Tensor | None, torch.Tensor | None]] = []

    def record(self, target: PruneTarget, values: bool) -> None:
        mask = get_mask(target.module, target.param_name)
        self.saved.append((target, target.stored.detach().clone() if values else None,
                           None if mask is None else mask.clone()))

    def restore(self) -> None:
        for target, values, mask in reversed(self.saved):
            with torch.no_grad():
                if mask is None:
                    for _, module, param_name in target.holders:
                        if get_mask(module, param_name) is not None:
                            parametrize.remove_parametrizations(module, param_name, leave_parametrized=False)
                else:
                    get_mask(target.module, target.param_name).copy_(mask)
                if values is not None:
                    target.stored.copy_(values)


def _apply(target: PruneTarget, keep: torch.Tensor, weight: torch.Tensor | None, undo: _Undo) -> bool:
    """Write reconstructed values (if any) and mask every holder of ``target`` with one shared mask.

    The stored values are left as they are (the caller zeroes them once every mask is in place), so
    undoing a mask needs no copy of them. Returns False when nothing was pruned or masked.
    """
    if bool(keep.all()) and get_mask(target.module, target.param_name) is None:
        return False  # nothing pruned here: leave the tensor unparametrized
    undo.record(target, values=weight is not None)
    if weight is not None:
        with torch.no_grad():
            target.stored.copy_(weight)
    shared = Mask(keep, copy=False)  # the mask was made for this tensor alone: no second copy
    for _, module, param_name in target.holders:
        shared = apply_mask(module, param_name, shared, zero_stored=False)
    return True


_GEMM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _criterion(target: PruneTarget, opts: MagnitudeOptions, stats: dict[int, InputStats]) -> str:
    """The criterion ``target`` is scored by: ``activation`` only with input statistics to use."""
    if opts.criterion != "activation" or target.is_bias:
        return "weight"
    seen = any(stats.get(id(m)) is not None for _, m, _ in target.holders)
    if not seen or target.param_name != "weight" or not isinstance(target.module, _GEMM_LAYERS):
        return "weight (no input statistics)"
    return "activation"


def _input_scale(target: PruneTarget, weight: torch.Tensor, stats: dict[int, InputStats]) -> torch.Tensor:
    """Per-entry input norms broadcastable to ``weight``: the activation criterion is ``|w| * scale``."""
    merged = merge_stats([stats.get(id(m)) for _, m, _ in target.holders])
    module = target.module
    norms = merged.column_norms().to(weight.device)
    if isinstance(module, nn.Linear):
        return norms.unsqueeze(0)
    out = weight.shape[0]
    if norms.numel() == weight[0].numel():  # per (channel, kernel position) from the Gram diagonal
        return norms.reshape(1, *weight.shape[1:])
    groups = module.groups
    per_group = norms.reshape(groups, -1)  # [groups, in / groups]
    row_group = torch.arange(out, device=weight.device) // (out // groups)
    scale = per_group[row_group]  # [out, in / groups]
    return scale.reshape(*scale.shape, *([1] * (weight.dim() - 2)))


def _select(
    found: list[PruneTarget], scores: _Scores, opts: MagnitudeOptions, fraction: float | None
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]], bool]:
    """Keep-masks for every target (pattern x scope x sparsity/threshold); each score is read once
    per layer (a few times with global ranking) and dropped."""
    lo, hi, one = opts.min_sparsity, opts.max_sparsity, not opts.allow_empty_layers
    keep: dict[str, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []
    exact = True
    nm = opts.n_of_m
    if nm is not None:
        n, m = nm
        for target in found:
            score = scores[target.name]
            if target.is_bias:
                skipped.append((target.name, f"biases have no input dimension; {opts.pattern} leaves them dense"))
            elif score.shape[1] < m:
                skipped.append((target.name, f"input dimension {score.shape[1]} is smaller than M={m} of {opts.pattern}; left dense"))
            elif score.shape[1] % m:
                skipped.append((target.name, f"input dimension {score.shape[1]} is not a multiple of M={m} of {opts.pattern}; left dense"))
            else:
                keep[target.name] = select.n_of_m(score, n, m)
        return keep, skipped, exact

    if opts.pattern == "structured":
        weights = [t for t in found if not t.is_bias]
        rows, shapes = {}, {}
        for t in weights:
            score = scores[t.name]
            rows[t.name] = select.row_scores(score, opts.norm, normalise=opts.scope == "global")
            shapes[t.name] = score.shape
            del score
        row_keep: dict[str, torch.Tensor] = {}
        if opts.threshold is not None:
            for t in weights:
                row_keep[t.name] = select.threshold_mask(rows[t.name], opts.threshold, lo, hi)
        elif opts.scope == "global":
            masks, exact = select.global_lowest([rows[t.name] for t in weights], fraction, lo, hi, keep_one=one)
            row_keep = {t.name: mk for t, mk in zip(weights, masks)}
        else:
            for t in weights:
                row_keep[t.name] = select.layer_lowest(rows[t.name], fraction, lo, hi, keep_one=one)
        for t in weights:
            shape = shapes[t.name]
            keep[t.name] = row_keep[t.name].reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        by_module = {id(t.module): t for t in weights}
        for t in found:
            if not t.is_bias:
                continue
            owner = by_module.get(id(t.module))
            if owner is None or row_keep[owner.name].numel() != scores[t.name].numel():
                skipped.append((t.name, "no pruned weight rows to follow; left dense"))
            else:
                keep[t.name] = row_keep[owner.name].clone()
        return keep, skipped, exact

    if opts.threshold is not None:
        for t in found:
            keep[t.name] = select.threshold_mask(scores[t.name], opts.threshold, lo, hi)
    elif opts.scope == "global":
        masks, exact = select.global_lowest([scores.reader(t.name) for t in found], fraction, lo, hi, keep_one=one)
        for t, mk in zip(found, masks):
            keep[t.name] = mk.reshape(t.effective().shape)
    elif opts.scope == "row":
        for t in found:
            keep[t.name] = select.row_lowest(scores[t.name], fraction, lo, hi, keep_one=one)
    else:
        for t in found:
            keep[t.name] = select.layer_lowest(scores[t.name], fraction, lo, hi, keep_one=one)
    return keep, skipped, exact


def _check_not_empty(found: list[PruneTarget], keep: dict[str, torch.Tensor], opts: MagnitudeOptions) -> None:
    if opts.allow_empty_layers:
        return
    empty = [t.name for t in found if t.name in keep and not bool(keep[t.name].any())]
    if empty:
        what = f"threshold {opts.threshold}" if opts.threshold is not None else "this setting"
        raise ModelError(
            f"magnitude: {what} would zero every weight of {', '.join(empty)}; lower the threshold, set "
            f"max_sparsity below 1, exclude the layer in 'targets', or set allow_empty_layers: true"
        )


def _reconstruct(target: PruneTarget, keep: torch.Tensor | None, stats: dict[int, InputStats],
                 opts: MagnitudeOptions) -> torch.Tensor | None:
    """Least-squares updated weights for ``target`` under ``keep``, or None when not applicable."""
    if keep is None or target.is_bias or target.param_name != "weight" or not target.writable():
        return None
    if not all(gram_supported(m) for _, m, _ in target.holders):
        return None
    merged = merge_stats([stats.get(id(m)) for _, m, _ in target.holders])
    if merged is None or merged.gram is None:
        return None
    weight = target.effective()
    rows = weight.reshape(weight.shape[0], -1)
    if merged.gram.shape[0] != rows.shape[1]:
        return None
    updated = sparsegpt_update(rows, keep.reshape(rows.shape), merged.gram.to(rows.device), damp=opts.damp)
    return updated.reshape(weight.shape)
