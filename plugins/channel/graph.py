"""Drive Torch-Pruning for the ``channel`` method: trace, protect layers, rank channels, remove them.

Torch-Pruning (``torch_pruning``) builds a dependency graph from one traced forward pass and, for a
channel removed from one layer, finds every coupled tensor (the BatchNorm after it, the input
columns of its consumers, both sides of a residual add, the matching slice of a concatenation, the
groups of a grouped conv, the head slices of attention). This module decides *what* may be pruned
(targets, ``ignore``, the protected first and output layers, per-layer ratios) and lets Torch-Pruning
do the surgery. It is imported lazily, so torchslim works without the ``prune`` extra.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from torchslim.batches import iterate, split_batch, tensors_in, to_device
from torchslim.errors import DataError, ModelError, PluginError, TorchslimError
from torchslim.recipe import Targets
from torchslim.targets import is_internal, select_modules

from .faults import tracer_error

INSTALL_HINT = "pip install 'torchslim[prune]'"

#: Layers whose output channels can start a pruning group (Torch-Pruning's root types).
ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)

#: Module types pruned when the recipe's targets name none: convolutions and linear layers.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)

#: Layers with weights that fix a tensor's channel count (where the protection walks stop).
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.RNNBase, nn.Embedding,
)


def require_torch_pruning() -> Any:
    """Import and return ``torch_pruning``, or raise :class:`PluginError` with the install command."""
    try:
        import torch_pruning
    except ImportError as exc:
        raise PluginError(
            f"method 'channel' needs Torch-Pruning, which is not installed ({exc}); {INSTALL_HINT}"
        ) from None
    return torch_pruning


def torch_pruning_available() -> bool:
    """True when ``torch_pruning`` can be imported."""
    try:
        require_torch_pruning()
    except PluginError:
        return False
    return True


@dataclass
class Outcome:
    """What one pruning run did: the skipped layers (with reasons) and Torch-Pruning's warnings."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    groups: int = 0
    engine: str = "torch-pruning"  # or "transformer-blocks" (heads and MLP widths sliced directly)


def make_importance(tp: Any, name: str) -> Any:
    """The Torch-Pruning importance criterion for ``name`` (l1, l2, bn_scale, taylor)."""
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown importance {name!r}")  # pragma: no cover - Options rejects it first


class _Recording:
    """Wraps an importance criterion and remembers the groups it could not rank (returned None)."""

    def __init__(self, importance: Any, names: dict[int, str]) -> None:
        self.importance = importance
        self.names = names
        self.unranked: list[str] = []

    def __call__(self, group: Any) -> torch.Tensor | None:
        score = self.importance(group)
        if score is None:
            root = group[0].dep.target.module
            self.unranked.append(self.names.get(id(root), type(root).__name__))
        return score


def _pruner_class(tp: Any) -> type:
    class Pruner(tp.pruner.BasePruner):
        """Torch-Pruning's pruner, with ``round_to`` never rounding a layer down to zero channels."""

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            keep = current_channels - n_pruned
            keep -= keep % round_to
            # Torch-Pruning rounds down and may reach 0; keep at least one multiple (or all, if fewer).
            keep = max(keep, min(round_to, current_channels))
            return max(current_channels - keep, 0)

    return Pruner


def output_layers(graph: Any, outputs: Any) -> list[nn.Module]:
    """The weight layers whose channels reach the model output (walking back through norms, adds...)."""
    grad_fns = {t.grad_fn for t in tensors_in(outputs) if t.grad_fn is not None}
    stack = [node for node in graph.module2node.values() if node.grad_fn in grad_fns]
    seen: set[int] = set()
    found: list[nn.Module] = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, WEIGHT_TYPES):
            found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def first_layers(graph: Any) -> list[nn.Module]:
    """Root-type layers with no weight layer before them: they read the model input (the stem)."""
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, ROOT_TYPES):
            continue
        stack, seen, reached = list(node.inputs), set(), False
        while stack and not reached:
            up = stack.pop()
            if id(up) in seen:
                continue
            seen.add(id(up))
            reached = isinstance(up.module, WEIGHT_TYPES)
            stack.extend(up.inputs)
        if not reached:
            found.append(module)
    return found


def _glob_modules(model: nn.Module, pattern: str, kinds: tuple[type[nn.Module], ...] | None,
                  option: str, where: str) -> list[tuple[str, nn.Module]]:
    named = [(n, m) for n, m in model.named_modules() if n and not is_internal(n)]
    hits = [(n, m) for n, m in named if fnmatchcase(n, pattern) and (kinds is None or isinstance(m, kinds))]
    if not hits:
        sample = [n for n, m in named if kinds is None or isinstance(m, kinds)][:8]
        raise ModelError(
            f"{where}: {option} glob {pattern!r} matches no {'prunable layer' if kinds else 'module'}; "
            f"names in this model look like: {', '.join(sample) or '(none)'}. Fix the glob."
        )
    return hits


def accumulate_gradients(model: nn.Module, context: Any, batches: int, where: str) -> None:
    """Fill ``.grad`` of every parameter with the task loss summed over ``batches`` training batches."""
    if context.train_data is None:
        raise DataError(
            f"{where}: importance 'taylor' needs train_data with targets (it ranks channels by "
            f"gradient x weight); pass train_data=... to Engine.run, or use importance l1/l2/bn_scale"
        )
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for index, batch in enumerate(iterate(context.train_data, "train_data", limit=batches), start=1):
                inputs, target = split_batch(batch)
                if target is None:
                    raise DataError(
                        f"{where}: importance 'taylor' needs targets, but train_data batch {index} has none; "
                        f"batches must be (inputs, target), or use importance l1/l2/bn_scale"
                    )
                loss = context.loss(context.forward(model, inputs), to_device(target, context.device))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise DataError(f"{where}: the loss of train_data batch {index} is not a scalar tensor")
                loss.backward()
    finally:
        for param in frozen:
            param.requires_grad_(False)


def tied_holders(model: nn.Module) -> dict[int, str]:
    """``id`` of every module holding a tied weight (one Parameter in several modules) -> the tie, in words.

    Torch-Pruning prunes each holder's copy on its own and gives each a new Parameter, which silently
    unties them; groups touching such a module are left alone instead.
    """
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module._parameters.items():
            if param is not None:
                bucket = holders.setdefault(id(param), [])
                if all(m is not module for _, m, _ in bucket):
                    bucket.append((module_name, module, param_name))
    tied: dict[int, str] = {}
    for bucket in holders.values():
        if len(bucket) > 1:
            words = "the tied weight " + " = ".join(f"{n}.{p}" if n else p for n, _, p in bucket)
            for _, module, _ in bucket:
                tied.setdefault(id(module), words)
    return tied


def _cap(pruner: Any, group: Any, cap: float, round_to: int | None) -> Any:
    """Trim a group so that at most ``cap`` of its channels go (global ranking can empty a layer)."""
    graph = pruner.DG
    dep, idxs = group[0].dep, group[0].idxs
    module, handler = dep.target.module, dep.handler
    channels = graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(handler) else (
        graph.get_in_channels(module))
    if not channels or pruner._get_channel_groups(group) != 1:
        return group
    keep = max(1, int(channels * (1.0 - cap)))  # rounded as Torch-Pruning rounds its ratio
    if round_to:
        keep = min(channels, math.ceil(keep / round_to) * round_to)
    allowed = channels - keep
    if len(idxs) <= allowed:
        return group
    # Scores of the whole layer (Torch-Pruning ranks full groups), then the weakest of the chosen go.
    scores = pruner.estimate_importance(graph.get_pruning_group(module, handler, list(range(channels))))
    if scores is None or len(scores) != channels:
        return group
    chosen = torch.as_tensor(list(idxs))
    weakest = chosen[torch.argsort(scores.cpu()[chosen])[:allowed]]
    return graph.get_pruning_group(module, handler, sorted(weakest.tolist()))


def prune_model(model: nn.Module, inputs: tuple, ratio: float, opts: Any, targets: Targets | None,
                context: Any, where: str, *, finetune_between: dict | None = None,
                skip_inside: tuple[type[nn.Module], ...] = ()) -> Outcome:
    """Remove channels from ``model`` in place; return what was skipped and why.

    ``opts`` is the ``channel`` method's Options; ``ratio`` replaces ``opts.ratio`` (the MAC-ratio
    search calls this with trial ratios). Failures inside Torch-Pruning become :class:`ModelError`.
    """
    tp = require_torch_pruning()
    names = {id(m): n for n, m in model.named_modules()}
    outcome = Outcome()
    roots = [(n, m) for n, m in model.named_modules() if n and not is_internal(n) and isinstance(m, ROOT_TYPES)]

    ignored: list[nn.Module] = []
    reasons: dict[str, str] = {}
    selected = {id(m) for _, m in select_modules(model, targets, DEFAULT_TYPES, skip_inside=skip_inside)}
    for name, module in roots:
        if id(module) not in selected:
            ignored.append(module)
            reasons.setdefault(name, "not selected by targets")
    for name, module in model.named_modules():
        if name and skip_inside and isinstance(module, skip_inside):
            ignored.append(module)
            reasons.setdefault(name, "a factor module of an earlier step; its channels are kept")
    for pattern in opts.ignore:
        for name, module in _glob_modules(model, pattern, None, "ignore", where):
            ignored.append(module)
            reasons.setdefault(name, f"ignored: matches ignore glob {pattern!r}")
    ratios: dict[nn.Module, float] = {}
    for pattern, layer_ratio in opts.overrides.items():
        for _, module in _glob_modules(model, pattern, ROOT_TYPES, "overrides", where):
            ratios.setdefault(module, layer_ratio)

    # Attention: remove the same offsets from every head so each head keeps its own dims.
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention) and m.num_heads > 1}
    importance = _Recording(make_importance(tp, opts.importance), names)
    captured: dict[str, Any] = {}

    def keep_output(out: Any) -> Any:
        captured["out"] = out
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pruner = _pruner_class(tp)(
                model, inputs, importance=importance,
                global_pruning=opts.scope == "global", pruning_ratio=ratio, pruning_ratio_dict=ratios or None,
                max_pruning_ratio=opts.max_layer_ratio, iterative_steps=opts.iterative_steps,
                ignored_layers=ignored, round_to=opts.round_to,
                out_channel_groups=dict(heads), in_channel_groups=dict(heads),
                output_transform=keep_output,
            )
        except TorchslimError:
            raise
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failure: say where, not how
            raise tracer_error(exc, names, "tracing the model", where) from None
    outcome.warnings = sorted({str(w.message).strip() for w in caught})

    protected = [(m, "protected: produces the model output") for m in output_layers(pruner.DG, captured.get("out"))]
    if opts.protect_first:
        protected += [(m, "protected: first layer, reads the model input (protect_first)")
                      for m in first_layers(pruner.DG)]
    for module, reason in protected:
        pruner.ignored_layers.extend(module.modules())
        reasons.setdefault(names[id(module)], reason)

    tied = tied_holders(model)
    for step in range(opts.iterative_steps):
        if opts.importance == "taylor":
            accumulate_gradients(model, context, opts.calibration_batches, where)
        try:
            for group in pruner.step(interactive=True):
                tie = next((tied[id(item.dep.target.module)] for item in group
                            if id(item.dep.target.module) in tied), None)
                if tie is not None:  # Torch-Pruning would give each holder its own copy: keep the channels
                    root = names.get(id(group[0].dep.target.module), type(group[0].dep.target.module).__name__)
                    reasons.setdefault(root, f"its channels are coupled to {tie}; pruning them would untie the "
                                             f"weight, so they are kept")
                    continue
                _cap(pruner, group, opts.max_layer_ratio, opts.round_to).prune()
                outcome.groups += 1
        except TorchslimError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise tracer_error(exc, names, "removing channels", where) from None
        if finetune_between is not None and step < opts.iterative_steps - 1:
            result = context.run_step(model, {"finetune": dict(finetune_between)})
            if result.model is not model:
                raise ModelError(
                    f"{where}: finetune_between method {finetune_between.get('method')!r} returned a new "
                    f"model object; iterative pruning needs it to train the model in place"
                )
    model.zero_grad(set_to_none=True)

    for name in dict.fromkeys(importance.unranked):
        reasons.setdefault(name, f"importance {opts.importance!r} cannot rank it (no BatchNorm follows it); "
                                 f"its channels are kept")
    outcome.skipped = sorted(reasons.items())
    return outcome
