"""Import paths of torchslim 0.1 that moved in 0.2, kept as deprecated aliases until 0.3.

One finder on ``sys.meta_path`` answers for every old module name: importing one gives a module whose
attributes come from the new homes, with a :class:`DeprecationWarning` naming the new path. The old
``torchslim.lowrank`` and ``torchslim.decompose`` point into the built-in ``svd`` plugin; this is the
one place core names a plugin module, and only so that 0.1 user code keeps importing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old module -> the modules that now hold its public names (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "torchslim.lowrank": ("torchslim.plugins.svd.modules",),
    "torchslim.decompose": ("torchslim.plugins.svd.spectra", "torchslim.plugins.svd.ranks",
                            "torchslim.plugins.svd.macs", "torchslim.plugins.svd.calibration",
                            "torchslim.plugins.svd.eligibility"),
    "torchslim.data": ("torchslim.demo.digits",),
    "torchslim.report": ("torchslim.tables",),
    "torchslim.instrument": ("torchslim.memory",),
    "torchslim.sparse": ("torchslim.io.sparse",),
    "torchslim.manifest": ("torchslim.io.manifest",),
    "torchslim.checkpoint": ("torchslim.io.checkpoint",),
}
#: names renamed on the way (old name -> new name), per old module
RENAMED: dict[str, dict[str, str]] = {
    "torchslim.decompose": {"applicable_kinds": "applicable_forms", "KINDS": "FORMS"},
}


class _AliasModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        wanted = RENAMED.get(self.__name__, {}).get(name, name)
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, wanted):
                warnings.warn(f"{self.__name__}.{name} moved to {target}.{wanted}; the old path goes in 0.3",
                              DeprecationWarning, stacklevel=2)
                return getattr(module, wanted)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _AliasModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = f"Deprecated alias of {', '.join(MOVED[module.__name__])}."


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader())
        return None


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
