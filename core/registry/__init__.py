"""The plugin registry: finds every plugin through entry points, checks it against the contract, looks it up.

:mod:`.manager` holds :class:`PluginRegistry` (discovery, allow/block lists, name clashes, lookup);
:mod:`.declarations` checks one plugin object (hook names and signatures, declared attributes).
"""

from __future__ import annotations

from .declarations import HOOKS, closest_hook, strength_of
from .manager import ENTRY_POINT_GROUP, RUNTIME, PluginInfo, PluginRegistry, Strategy, module_kind_name

__all__ = ["ENTRY_POINT_GROUP", "HOOKS", "RUNTIME", "PluginInfo", "PluginRegistry", "Strategy", "closest_hook",
           "module_kind_name", "strength_of"]
