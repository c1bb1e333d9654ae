"""Checking a plugin object against the contract when it loads: hookimpl names, signatures, declarations.

Each check returns the problems it finds as sentences that name the plugin's distribution, the hook
or attribute at fault and the fix; the registry turns them into one :class:`~torchslim.PluginError`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from pydantic import BaseModel
from torch import nn

from .. import hookspecs

#: Every hook of the contract, stage hooks first.
HOOKS: tuple[str, ...] = (*hookspecs.STAGES, "evaluate", "register_strategies", "register_module_kinds")
_IMPL_MARKER = f"{hookspecs.PROJECT}_impl"
_DIRECTIONS = ("higher", "lower")


def closest_hook(name: str) -> str | None:
    """The contract hook whose name is closest to ``name`` (a likely typo), or None."""
    found = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6)
    return found[0] if found else None


def marked_hooks(plugin: Any) -> dict[str, Any]:
    """``{name: function}`` of every attribute of ``plugin`` marked with ``@torchslim.hookimpl``."""
    found = {}
    for name in dir(plugin):
        if name.startswith("__"):
            continue
        value = inspect.getattr_static(plugin, name, None)
        value = getattr(value, "__func__", value)
        if getattr(value, _IMPL_MARKER, None) is not None:
            found[name] = getattr(plugin, name)
    return found


def hook_problems(plugin: Any, owner: str) -> list[str]:
    """Misspelt or unmarked hooks: a ``@hookimpl`` that is no hook, or a hook-like method left unmarked."""
    problems = []
    marked = marked_hooks(plugin)
    for name in marked:
        if name not in HOOKS:
            near = closest_hook(name)
            hint = f"; did you mean {near!r}?" if near else f"; the hooks are {', '.join(HOOKS)}"
            problems.append(f"{owner}: @torchslim.hookimpl {name!r} is not a torchslim hook{hint}")
    for name in dir(plugin):
        if name.startswith("_") or name in marked or not callable(getattr(plugin, name, None)):
            continue
        if name in HOOKS:
            problems.append(f"{owner}: method {name!r} is a torchslim hook but is not marked; decorate it with "
                            f"@torchslim.hookimpl")
        elif not marked and closest_hook(name) is not None:
            problems.append(f"{owner}: implements no torchslim hook; {name!r} looks like the hook "
                            f"{closest_hook(name)!r}: fix the name and mark it with @torchslim.hookimpl")
    if not marked and not problems:
        problems.append(f"{owner}: implements no torchslim hook; mark its hook methods with @torchslim.hookimpl "
                        f"(hooks: {', '.join(HOOKS)})")
    return problems


def signature_problems(plugin: Any, owner: str) -> list[str]:
    """Hook implementations asking for arguments their hook does not pass (pluggy would refuse them)."""
    problems = []
    for name, impl in marked_hooks(plugin).items():
        spec = getattr(hookspecs, name, None)
        if spec is None:
            continue
        offered = list(inspect.signature(spec).parameters)
        wanted = [p.name for p in inspect.signature(impl).parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        unknown = [arg for arg in wanted if arg not in offered]
        if unknown:
            problems.append(f"{owner}: hook {name!r} is called with ({', '.join(offered)}), but the implementation "
                            f"asks for {', '.join(map(repr, unknown))}; rename the argument(s) to the hook's")
    return problems


def strength_of(options: type[BaseModel] | None, plugin: Any = None) -> tuple[str, str] | None:
    """``(field, direction)`` of a method's strength knob: the ``strength`` attribute or the marked field."""
    declared = getattr(plugin, "strength", None) if plugin is not None else None
    if declared is not None:
        return tuple(declared)  # type: ignore[return-value]
    if options is None:
        return None
    for name, info in options.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("strength"):
            return name, "lower" if extra["strength"] == "lower" else "higher"
    return None


def declaration_problems(plugin: Any, owner: str, stages: tuple[str, ...]) -> list[str]:
    """The plugin's declared attributes (``Options``, ``default_types``, ``strength``, ``metrics``, ...)."""
    problems = []
    options = getattr(plugin, "Options", None)
    if options is not None and not (inspect.isclass(options) and issubclass(options, BaseModel)):
        problems.append(f"{owner}: its Options attribute must be a pydantic BaseModel class, got {options!r}")
        options = None
    types = getattr(plugin, "default_types", None)
    if types is not None and not (isinstance(types, (tuple, list)) and all(
            inspect.isclass(t) and issubclass(t, nn.Module) for t in types)):
        problems.append(f"{owner}: default_types must be a tuple of nn.Module classes, got {types!r}")
    problems += _strength_problems(plugin, owner, options)
    if "evaluate" in stages:
        metrics = getattr(plugin, "metrics", None)
        if not isinstance(metrics, dict) or not metrics:
            problems.append(f"{owner}: an evaluator declares metrics = {{'name': 'higher' | 'lower'}}, got {metrics!r}")
        else:
            wrong = {k: v for k, v in metrics.items() if v not in _DIRECTIONS}
            if wrong:
                problems.append(f"{owner}: metric directions must be 'higher' or 'lower', got {wrong}")
    needs = getattr(plugin, "needs", ())
    wrong = [n for n in (needs or ()) if n not in ("train_data", "eval_data", "example_inputs")] \
        if isinstance(needs, (tuple, list)) else [needs]
    if wrong:
        problems.append(f"{owner}: needs may name 'train_data', 'eval_data' and 'example_inputs', got {wrong}")
    longer = getattr(plugin, "train_longer", None)
    if longer is not None and not callable(longer):
        problems.append(f"{owner}: train_longer must be a method train_longer(options, factor) -> options")
    return problems


def _strength_problems(plugin: Any, owner: str, options: type[BaseModel] | None) -> list[str]:
    declared = getattr(plugin, "strength", None)
    if declared is None:
        return []
    if not (isinstance(declared, (tuple, list)) and len(declared) == 2 and declared[1] in _DIRECTIONS):
        return [f"{owner}: strength must be (option_name, 'higher' | 'lower'), got {declared!r}"]
    if options is None or declared[0] not in options.model_fields:
        known = ", ".join(options.model_fields) if options is not None else "none (no Options)"
        return [f"{owner}: strength names option {declared[0]!r}, which its Options lack; options: {known}"]
    return []
