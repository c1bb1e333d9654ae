"""Engines for plugin tests: an engine over a registry, and a plugin registered for one block."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..engine import Engine
from ..registry import PluginRegistry


def engine_of(engine_or_registry: "Engine | PluginRegistry") -> "Engine":
    """The :class:`~torchslim.Engine` to run checks with: the engine itself, or one over a registry."""
    if isinstance(engine_or_registry, Engine):
        return engine_or_registry
    if isinstance(engine_or_registry, PluginRegistry):
        return Engine(registry=engine_or_registry)
    raise TypeError(f"expected a torchslim.Engine or PluginRegistry, got {type(engine_or_registry).__name__}")


@contextlib.contextmanager
def register_inline_plugin(engine: "Engine | PluginRegistry", plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (object or class) under ``name`` for the ``with`` block, then unregister it.

    Yields the registered plugin object. Unregistration happens in ``finally``, so a failing test
    leaves the engine as it found it::

        with register_inline_plugin(engine, MyMethod, "mine"):
            engine.run(model, {"steps": [{"compress": {"method": "mine"}}]})
    """
    registry = getattr(engine, "registry", engine)
    obj = registry.register(plugin, name=name)
    registered = next(key for key, info in registry.infos.items() if info.obj is obj)
    try:
        yield obj
    finally:
        if registered in registry.infos:
            registry.unregister(registered)
