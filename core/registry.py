"""Plugin manager: entry-point discovery, allow/block lists, runtime registration, method lookup.

Every method and evaluator, built-in or third-party, is an entry point in group ``torchslim`` whose
name is the method name. Environment variables choose what loads:

- ``TORCHSLIM_PLUGINS=a,b``: load only these entry points (allow list);
- ``TORCHSLIM_DISABLE_PLUGINS=a,b``: never load these (block list);
- ``TORCHSLIM_STRICT_PLUGINS=1``: a plugin that fails to load is fatal instead of reported.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "torchslim"
RUNTIME = "(runtime)"
KINDS = (*hookspecs.STAGES, "evaluate")


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
    def kind(self) -> str:
        if self.stages:
            return ",".join(self.stages)
        return "other"


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


class PluginRegistry:
    """Finds, loads and looks up torchslim plugins.

    >>> registry = PluginRegistry()          # discovers entry points
    >>> registry.methods("compress")         # doctest: +SKIP
    ['magnitude']
    """

    def __init__(
        self,
        *,
        discover: bool = True,
        allow: Iterable[str] | None = None,
        block: Iterable[str] | None = None,
        strict: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.allow = set(allow) if allow is not None else _env_list("TORCHSLIM_PLUGINS")
        self.block = set(block) if block is not None else (_env_list("TORCHSLIM_DISABLE_PLUGINS") or set())
        self.strict = _strict_from_env() if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginInfo] = []
        self.strategies: dict[str, Strategy] = {}
        self.module_kinds: dict[str, type] = {}
        self._kind_owner: dict[str, str] = {}
        if discover:
            self.discover()

    # ------------------------------------------------------------------ discovery
    def discover(self) -> None:
        """Load every entry point in group ``torchslim`` that the allow/block lists admit."""
        seen: set[tuple[str, str]] = set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else ""
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            if ep.name in self.block or (self.allow is not None and ep.name not in self.allow):
                self.failures.append(PluginInfo(ep.name, distribution=dist, version=version, status="disabled"))
                continue
            try:
                obj = ep.load()
                self.register(obj, name=ep.name, distribution=dist, version=version)
            except Exception as exc:  # noqa: BLE001 - one bad plugin must not take the tool down
                message = f"Error importing plugin {ep.name!r} ({ep.value}) from {dist}: {type(exc).__name__}: {exc}"
                if self.strict:
                    raise PluginError(message + "\n(TORCHSLIM_STRICT_PLUGINS is set, so this is fatal)") from exc
                self.failures.append(
                    PluginInfo(ep.name, distribution=dist, version=version, status="error", error=message)
                )

    # ------------------------------------------------------------------ registration
    def register(self, plugin: Any, name: str | None = None, *, distribution: str = RUNTIME,
                 version: str = "") -> Any:
        """Register a plugin object (or class, which is instantiated) under ``name``.

        Raises :class:`PluginError` when ``name`` is taken, naming both owners.
        """
        if inspect.isclass(plugin):
            plugin = plugin()
        name = name or getattr(plugin, "name", None) or type(plugin).__name__.lower()
        if name in self.infos:
            other = self.infos[name]
            raise PluginError(
                f"two plugins claim the name {name!r}: {other.distribution} and {distribution}; "
                f"uninstall one, or block one with TORCHSLIM_DISABLE_PLUGINS"
            )
        options = getattr(plugin, "Options", None)
        if options is not None and not (inspect.isclass(options) and issubclass(options, BaseModel)):
            raise PluginError(f"plugin {name!r}: its Options attribute must be a pydantic BaseModel class")
        self.pm.register(plugin, name=name)
        stages = self._stages_of(plugin)
        if len([s for s in stages if s in hookspecs.STAGES]) > 1:
            self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} implements several stages {stages}; a method has one stage")
        info = PluginInfo(name, stages, distribution, version, obj=plugin)
        self.infos[name] = info
        try:
            self._collect_registrations(plugin, info)
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

    def _stages_of(self, plugin: Any) -> tuple[str, ...]:
        stages = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.name not in KINDS:
                continue
            impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
            if any(not (i.wrapper or i.hookwrapper) for i in impls):
                stages.append(caller.name)
        return tuple(stages)

    def _collect_registrations(self, plugin: Any, info: PluginInfo) -> None:
        def register_strategy(name: str, recipe: Any, description: str = "") -> None:
            if name in self.strategies:
                raise PluginError(
                    f"two plugins register the strategy {name!r}: "
                    f"{self.strategies[name].distribution} and {info.distribution}"
                )
            self.strategies[name] = Strategy(name, recipe, description, info.distribution, info.name)

        def register_kind(cls: type) -> None:
            key = module_kind_name(cls)
            for needed in ("torchslim_spec", "from_torchslim_spec"):
                if not hasattr(cls, needed):
                    raise PluginError(f"module kind {key} (plugin {info.name!r}) lacks {needed}()")
            self.module_kinds[key] = cls
            self._kind_owner[key] = info.name

        if hasattr(plugin, "register_strategies"):
            plugin.register_strategies(register=register_strategy)
        if hasattr(plugin, "register_module_kinds"):
            plugin.register_module_kinds(register=register_kind)

    # ------------------------------------------------------------------ lookup
    def plugins(self) -> list[PluginInfo]:
        """Every plugin known, loaded or not, sorted by name."""
        return sorted([*self.infos.values(), *self.failures], key=lambda i: (i.name, i.status))

    def methods(self, stage: str) -> list[str]:
        """Names of the loaded methods of ``stage`` (or evaluators, for ``"evaluate"``)."""
        return sorted(name for name, info in self.infos.items() if stage in info.stages)

    def evaluators(self) -> list[str]:
        """Names of the loaded evaluators."""
        return self.methods("evaluate")

    def get(self, stage: str, name: str) -> Any:
        """The plugin object of method ``name`` in ``stage``, or a :class:`PluginError` saying what exists."""
        info = self.infos.get(name)
        if info is not None and stage in info.stages:
            return info.obj
        installed = ", ".join(self.methods(stage)) or "none"
        what = "evaluator" if stage == "evaluate" else f"{stage} method"
        hint = ""
        failed = [f for f in self.failures if f.name == name]
        if failed:
            hint = f" It is installed but {failed[0].status}: {failed[0].error or 'see torchslim plugins'}."
        elif info is not None:
            hint = f" A plugin {name!r} exists but implements {info.kind}, not {stage}."
        raise PluginError(
            f"unknown {what} {name!r}; installed: {installed}.{hint} If it comes from a separate "
            f"package, is the plugin not installed? (pip install the package that provides it)"
        )

    def options_model(self, stage: str, name: str) -> type[BaseModel] | None:
        """The ``Options`` pydantic model of a method, or None when it takes no options."""
        return getattr(self.get(stage, name), "Options", None)

    def directions(self) -> dict[str, str]:
        """Metric name -> ``"higher"`` or ``"lower"`` (is better), as evaluators declare them."""
        out: dict[str, str] = {}
        for name in self.evaluators():
            out.update(getattr(self.infos[name].obj, "metrics", {}) or {})
        return out

    def caller(self, stage: str, name: str) -> Callable[..., Any]:
        """A hook caller that runs only plugin ``name``'s ``stage`` implementation (plus wrappers)."""
        self.get(stage, name)  # raises a helpful error when it is not there
        others = [info.obj for key, info in self.infos.items() if key != name and stage in info.stages]
        return self.pm.subset_hook_caller(stage, remove_plugins=others)

    def evaluate(self, names: Iterable[str], model: Any, context: Any) -> dict[str, float]:
        """Run the named evaluators on ``model`` and merge their metrics."""
        merged: dict[str, float] = {}
        for name in names:
            for metrics in self.caller("evaluate", name)(model=model, context=context):
                merged.update(metrics or {})
        return merged


def module_kind_name(cls: type) -> str:
    """The manifest name of a module class: ``package.module.ClassName``."""
    return f"{cls.__module__}.{cls.__qualname__}"
