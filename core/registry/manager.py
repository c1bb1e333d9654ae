"""The plugin registry: discovery, validation at load, name clashes, allow/block lists, method lookup."""

from __future__ import annotations

import difflib
import inspect
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy
from pydantic import BaseModel

from .. import hookspecs
from ..errors import PluginError
from .declarations import declaration_problems, hook_problems, signature_problems, strength_of

ENTRY_POINT_GROUP = "torchslim"
RUNTIME = "(runtime)"
#: Hooks that make a plugin a method or an evaluator (its "role").
ROLES = (*hookspecs.STAGES, "evaluate")


@dataclass
class PluginInfo:
    """What ``torchslim plugins`` shows about one plugin."""

    name: str
    stages: tuple[str, ...] = ()
    distribution: str = RUNTIME
    version: str = ""
    status: str = "loaded"
    error: str = ""
    obj: Any = field(default=None, repr=False)

    @property
    def role(self) -> str:
        """The stage(s) or ``evaluate`` it implements, or ``other`` (strategies, module kinds, wrappers)."""
        return ",".join(self.stages) if self.stages else "other"

    kind = role  # 0.1 name, kept for callers of PluginInfo.kind

    @property
    def qualified(self) -> str:
        """``distribution:name``: how a recipe names it when two packages claim ``name``."""
        return f"{self.distribution}:{self.name}"


@dataclass
class Strategy:
    """A named recipe registered through ``register_strategies``."""

    name: str
    recipe: Any
    description: str
    distribution: str
    owner: str = ""


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _strict_from_env() -> bool:
    return os.environ.get("TORCHSLIM_STRICT_PLUGINS", "").lower() in ("1", "true", "yes", "on")


def normalise_distribution(name: str) -> str:
    """A distribution name as pip compares them: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


class PluginRegistry:
    """Finds, validates, loads and looks up torchslim plugins.

    Environment variables choose what loads: ``TORCHSLIM_PLUGINS=a,b`` (allow list),
    ``TORCHSLIM_DISABLE_PLUGINS=a,pkg:b`` (block list; ``pkg:b`` blocks one package's ``b`` only) and
    ``TORCHSLIM_STRICT_PLUGINS=1`` (a plugin that fails to load or to pass the contract is fatal).

    >>> registry = PluginRegistry()          # discovers entry points
    >>> registry.methods("compress")         # doctest: +SKIP
    ['magnitude']
    """

    def __init__(self, *, discover: bool = True, allow: Iterable[str] | None = None,
                 block: Iterable[str] | None = None, strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.allow = set(allow) if allow is not None else _env_list("TORCHSLIM_PLUGINS")
        self.block = set(block) if block is not None else (_env_list("TORCHSLIM_DISABLE_PLUGINS") or set())
        self.strict = _strict_from_env() if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginInfo] = []
        self.clashes: dict[str, list[str]] = {}
        self.strategies: dict[str, Strategy] = {}
        self.module_kinds: dict[str, type] = {}
        self._kind_owner: dict[str, str] = {}
        if discover:
            self.discover()

    # ------------------------------------------------------------------ discovery
    def discover(self) -> None:
        """Load every entry point in group ``torchslim`` that the allow/block lists admit."""
        for name, points in self._entry_points().items():
            admitted = [(ep, dist, version) for ep, dist, version in points if self._admitted(name, dist, version)]
            if len(admitted) > 1:  # two packages claim one name: both load, each only by dist:name
                self.clashes[name] = [f"{dist}:{name}" for _, dist, _ in admitted]
            for ep, dist, version in admitted:
                key = f"{dist}:{name}" if len(admitted) > 1 else name
                self._load(ep, key, name, dist, version)
        self.pm.check_pending()  # every hookimpl matches a hookspec (the checks above make sure)

    def _entry_points(self) -> dict[str, list[tuple[Any, str, str]]]:
        grouped: dict[str, list[tuple[Any, str, str]]] = {}
        seen: set[tuple[str, str]] = set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = normalise_distribution(ep.dist.name) if ep.dist is not None else "?"
            grouped.setdefault(ep.name, []).append((ep, dist, ep.dist.version if ep.dist is not None else ""))
        return grouped

    def _admitted(self, name: str, dist: str, version: str) -> bool:
        qualified = f"{dist}:{name}"
        blocked = name in self.block or qualified in self.block
        allowed = self.allow is None or name in self.allow or qualified in self.allow
        if blocked or not allowed:
            how = "TORCHSLIM_DISABLE_PLUGINS" if blocked else "TORCHSLIM_PLUGINS"
            self.failures.append(PluginInfo(name, distribution=dist, version=version, status="disabled",
                                            error=f"left out by {how}"))
            return False
        return True

    def _load(self, ep: Any, key: str, name: str, dist: str, version: str) -> None:
        try:
            obj = ep.load()
            self.register(obj, name=key, distribution=dist, version=version)
        except Exception as exc:  # noqa: BLE001 - one bad plugin must not take the tool down
            loaded = isinstance(exc, PluginError)
            message = (str(exc) if loaded else
                       f"Error importing plugin {name!r} ({ep.value}) from {dist}: {type(exc).__name__}: {exc}")
            if self.strict:
                raise PluginError(message + "\n(TORCHSLIM_STRICT_PLUGINS is set, so this is fatal)") from exc
            self.failures.append(PluginInfo(name, distribution=dist, version=version, status="error", error=message))

    # ------------------------------------------------------------------ registration
    def register(self, plugin: Any, name: str | None = None, *, distribution: str = RUNTIME,
                 version: str = "") -> Any:
        """Register a plugin object (or class, which is instantiated) under ``name``.

        The plugin is checked against the contract first (:mod:`.declarations`); a misspelt or unmarked
        hook, a wrong argument name, a bad declaration or a taken name raise :class:`PluginError`
        naming the distribution, the hook or attribute and the fix. Nothing is registered then.
        """
        if inspect.isclass(plugin):
            plugin = plugin()
        name = name or getattr(plugin, "name", None) or type(plugin).__name__.lower()
        if name in self.infos:
            other = self.infos[name]
            raise PluginError(f"two plugins claim the name {name!r}: {other.distribution} and {distribution}; "
                              f"uninstall one, or block one with TORCHSLIM_DISABLE_PLUGINS={distribution}:{name}")
        owner = f"plugin {name!r} from {distribution}"
        problems = hook_problems(plugin, owner) + signature_problems(plugin, owner)
        stages = tuple(hook for hook in ROLES if _implements(plugin, hook))
        if len([s for s in stages if s in hookspecs.STAGES]) > 1:
            problems.append(f"{owner} implements several stages {stages}; a method has one stage")
        problems += declaration_problems(plugin, owner, stages)
        if problems:
            raise PluginError("\n".join(problems))
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # what the checks above do not foresee
            raise PluginError(f"{owner}: {exc}") from None
        info = PluginInfo(name.rpartition(":")[2], stages, distribution, version, obj=plugin)
        self.infos[name] = info
        try:
            self._collect_registrations(plugin, info, name)
        except Exception:
            self.unregister(name)
            raise
        return plugin

    def unregister(self, name: str) -> None:
        """Remove the plugin registered under ``name`` (and its strategies and module kinds)."""
        info = self.infos.pop(name, None)
        if info is None:
            raise PluginError(f"no plugin named {name!r} is registered")
        self.pm.unregister(info.obj)
        self.strategies = {key: s for key, s in self.strategies.items() if s.owner != name}
        for key, owner in list(self._kind_owner.items()):
            if owner == name:
                self.module_kinds.pop(key, None)
                del self._kind_owner[key]

    def _collect_registrations(self, plugin: Any, info: PluginInfo, key: str) -> None:
        def register_strategy(name: str, recipe: Any, description: str = "") -> None:
            if name in self.strategies:
                raise PluginError(f"two plugins register the strategy {name!r}: "
                                  f"{self.strategies[name].distribution} and {info.distribution}")
            self.strategies[name] = Strategy(name, recipe, description, info.distribution, key)

        def register_kind(cls: type, aliases: Iterable[str] = ()) -> None:
            kind = module_kind_name(cls)
            for needed in ("torchslim_spec", "from_torchslim_spec"):
                if not hasattr(cls, needed):
                    raise PluginError(f"module kind {kind} (plugin {key!r}) lacks {needed}()")
            for name in (kind, *aliases):  # aliases: names older releases wrote into manifests
                self.module_kinds[name] = cls
                self._kind_owner[name] = key

        others = [p for p in self.pm.get_plugins() if p is not plugin]
        for hook, register in (("register_strategies", register_strategy), ("register_module_kinds", register_kind)):
            self.pm.subset_hook_caller(hook, remove_plugins=others)(register=register)

    # ------------------------------------------------------------------ lookup
    def plugins(self) -> list[PluginInfo]:
        """Every plugin known, loaded or not, sorted by name."""
        return sorted([*self.infos.values(), *self.failures], key=lambda i: (i.name, i.distribution, i.status))

    def methods(self, stage: str) -> list[str]:
        """Names (``dist:name`` for clashing ones) of the loaded methods of ``stage`` (or evaluators)."""
        return sorted(key for key, info in self.infos.items() if stage in info.stages)

    def evaluators(self) -> list[str]:
        """Names of the loaded evaluators."""
        return self.methods("evaluate")

    def default_evaluators(self) -> list[str]:
        """The evaluators a recipe without an ``evaluate`` list runs: every loaded one that is ``by_default``."""
        return [name for name in self.evaluators() if getattr(self.infos[name].obj, "by_default", True)]

    def get(self, stage: str, name: str) -> Any:
        """The plugin object of method ``name`` in ``stage``, or a :class:`PluginError` saying what exists."""
        info = self.infos.get(name)
        if info is not None and stage in info.stages:
            return info.obj
        raise PluginError(self._missing(stage, name, info))

    def _missing(self, stage: str, name: str, info: PluginInfo | None) -> str:
        what = "evaluator" if stage == "evaluate" else f"{stage} method"
        if name in self.clashes:
            first, *rest = self.clashes[name]
            return (f"{what} {name!r} is provided by {len(self.clashes[name])} packages "
                    f"({', '.join(q.partition(':')[0] for q in self.clashes[name])}); choose one in the recipe, "
                    f"e.g. method: {first}, or block the others with "
                    f"TORCHSLIM_DISABLE_PLUGINS={','.join(rest)}")
        if info is not None:
            return f"{info.qualified} is a plugin for {info.role}, not a {what}"
        failed = [f for f in self.failures if f.name == name.rpartition(":")[2]]
        if failed and failed[0].status == "error":
            f = failed[0]
            return (f"{what} {name!r} is installed ({f.distribution} {f.version}) but failed to load: {f.error}. "
                    f"Fix or reinstall {f.distribution}; `torchslim plugins` lists load errors")
        if failed:
            return f"{what} {name!r} from {failed[0].distribution} is installed but {failed[0].error}"
        installed = self.methods(stage)
        near = difflib.get_close_matches(name, installed, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return (f"unknown {what} {name!r}; {hint}installed: {', '.join(installed) or 'none'}. If it comes from "
                f"a separate package, pip install that package")

    def options_model(self, stage: str, name: str) -> type[BaseModel] | None:
        """The ``Options`` pydantic model of a method, or None when it takes no options."""
        return getattr(self.get(stage, name), "Options", None)

    def strength(self, stage: str, name: str) -> tuple[str, str] | None:
        """``(option, direction)`` of a method's strength knob, or None when it has none."""
        plugin = self.get(stage, name)
        return strength_of(getattr(plugin, "Options", None), plugin)

    def directions(self) -> dict[str, str]:
        """Metric name -> ``"higher"`` or ``"lower"`` (is better), as evaluators declare them."""
        out: dict[str, str] = {}
        for name in self.evaluators():
            out.update(getattr(self.infos[name].obj, "metrics", {}) or {})
        return out

    def producer(self, metric: str) -> str | None:
        """The evaluator that returns ``metric`` (or is named ``metric`` and returns one metric), or None."""
        for name in self.evaluators():
            metrics = getattr(self.infos[name].obj, "metrics", {}) or {}
            if metric in metrics or (name == metric and len(metrics) == 1):
                return name
        return None

    def caller(self, stage: str, name: str) -> Callable[..., Any]:
        """A hook caller that runs only plugin ``name``'s ``stage`` implementation (plus wrappers)."""
        chosen = self.get(stage, name)
        others = [info.obj for info in self.infos.values() if info.obj is not chosen and stage in info.stages]
        return self.pm.subset_hook_caller(stage, remove_plugins=others)

    def evaluate(self, names: Iterable[str], model: Any, context: Any) -> dict[str, float]:
        """Run the named evaluators on ``model`` and merge their metrics."""
        merged: dict[str, float] = {}
        for name in names:
            for metrics in self.caller("evaluate", name)(model=model, context=context):
                merged.update(metrics or {})
        return merged


def _implements(plugin: Any, hook: str) -> bool:
    """True when ``plugin`` has a non-wrapper ``@hookimpl`` for ``hook``."""
    impl = getattr(plugin, hook, None)
    options = getattr(getattr(impl, "__func__", impl), f"{hookspecs.PROJECT}_impl", None)
    return options is not None and not (options.get("wrapper") or options.get("hookwrapper"))


def module_kind_name(cls: type) -> str:
    """The manifest name of a module class: ``package.module.ClassName``."""
    return f"{cls.__module__}.{cls.__qualname__}"
