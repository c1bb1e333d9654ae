"""Select the modules a step touches, by name glob and module type."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from torch import nn

from .errors import ModelError
from .recipe import Targets

def is_transposed_linear(module: nn.Module) -> bool:
    """True for transformers' ``pytorch_utils.Conv1D`` (GPT-2's projections): ``y = x @ W + b`` with ``W``
    stored ``[in, out]``, the transpose of ``nn.Linear``'s. Recognised by class, without importing
    transformers."""
    return any(cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
               for cls in type(module).__mro__)


class _ByClassName(type(nn.Module)):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, nn.Module) and is_transposed_linear(obj)


class HFConv1D(nn.Module, metaclass=_ByClassName):
    """Stands for transformers' ``Conv1D`` in ``default_types``: ``isinstance(m, HFConv1D)`` is True for it.

    GPT-2 style models build every projection from it (weight ``[in, out]``); naming this class lets a
    method target them by default whether transformers is installed or not.
    """


#: Module types a weight method touches when the recipe names none.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNN, nn.LSTM, nn.GRU,
)


def _type_names(module: nn.Module) -> set[str]:
    names = set()
    for cls in type(module).__mro__:
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    return names


def is_internal(name: str) -> bool:
    """True for modules torchslim or parametrize adds inside a layer (mask holders)."""
    return ".parametrizations." in f".{name}." or name.endswith(".parametrizations")


def matches(name: str, module: nn.Module, targets: Targets,
            default_types: Sequence[type[nn.Module]] = WEIGHT_LAYERS) -> bool:
    """True when module ``name`` is selected by ``targets`` (types default to ``default_types``)."""
    if not any(fnmatchcase(name, pattern) for pattern in targets.include):
        return False
    if any(fnmatchcase(name, pattern) for pattern in targets.exclude):
        return False
    if targets.types:
        return bool(_type_names(module) & set(targets.types))
    return isinstance(module, tuple(default_types))


def select_modules(
    model: nn.Module,
    targets: Targets | None = None,
    default_types: Sequence[type[nn.Module]] = WEIGHT_LAYERS,
    *,
    skip_inside: Iterable[type[nn.Module]] = (),
) -> list[tuple[str, nn.Module]]:
    """The ``(qualified_name, module)`` pairs of ``model`` that ``targets`` selects, in model order.

    Modules inside parametrization containers are never selected; modules nested inside one of the
    ``skip_inside`` types (e.g. factor modules a step already produced) are skipped too.
    """
    targets = targets or Targets()
    skip_inside = tuple(skip_inside)
    chosen = []
    blocked: list[str] = []
    for name, module in model.named_modules():
        if not name or is_internal(name):
            continue
        if any(name.startswith(prefix + ".") for prefix in blocked):
            continue
        if skip_inside and isinstance(module, skip_inside):
            blocked.append(name)
            continue
        if matches(name, module, targets, default_types):
            chosen.append((name, module))
    return chosen


def require_selection(model: nn.Module, targets: Targets, default_types: Sequence[type[nn.Module]],
                      where: str) -> list[tuple[str, nn.Module]]:
    """:func:`select_modules`, raising a :class:`ModelError` that shows real names when none match."""
    chosen = select_modules(model, targets, default_types)
    if chosen:
        return chosen
    kinds = ", ".join(targets.types or sorted({t.__name__ for t in default_types}))
    sample = [n for n, m in model.named_modules() if n and not is_internal(n)
              and (not targets.types and isinstance(m, tuple(default_types)))][:8]
    raise ModelError(
        f"{where}: targets include={targets.include} exclude={targets.exclude} match no module of "
        f"type {kinds}; such modules in this model are named like: {', '.join(sample) or '(none)'}. "
        f"Fix the globs in 'targets'."
    )
