"""The floor plan holds: core never imports a built-in plugin, shared machinery never imports the engine,
no import circles inside core, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE, PLUGINS = ROOT / "core", ROOT / "plugins"

#: Core modules that drive a run: the engine and what orchestrates it. Everything else in core is the
#: contract (hookspecs, errors, schema), the registry, or shared machinery every plugin may use.
ENGINE_LAYER = ("engine", "search", "preflight", "cli", "demo", "testing")
CONTRACT = ("hookspecs", "errors", "schema")


def module_name(path: Path) -> str:
    """``torchslim.io.save`` for core/io/save.py, ``torchslim.plugins.svd`` for plugins/svd/__init__.py."""
    base, prefix = (CORE, "torchslim") if CORE in path.parents else (PLUGINS, "torchslim.plugins")
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix, *parts])


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported: module-level statements, not TYPE_CHECKING blocks or
    function bodies (those are looked at separately)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.update(_resolve(node, package))

    visit(tree.body)
    return found


def all_imports(path: Path) -> set[str]:
    """Every import anywhere in ``path``, function bodies and TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(node, package))
    return found


def _resolve(node: ast.ImportFrom, package: str) -> set[str]:
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    # ``from . import masks`` imports the submodule ``masks``; ``from .io import save`` the package ``io``
    return {f"{stem}.{alias.name}" for alias in node.names} | {stem} if not node.module else {stem}


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def layer_of(name: str) -> str:
    if name == "torchslim":
        return "api"  # the package's front door re-exports every layer
    parts = name.split(".")
    first = parts[1] if len(parts) > 1 else ""
    if first in ENGINE_LAYER:
        return "engine"
    if first in CONTRACT:
        return "contract"
    if first == "registry":
        return "registry"
    return "shared"


def test_core_never_imports_a_builtin_plugin():
    offenders = [f"{module_name(p)} imports {m}" for p in core_files() for m in all_imports(p)
                 if m.startswith("torchslim.plugins")]
    assert not offenders, offenders


def test_shared_machinery_never_imports_the_engine():
    offenders = []
    for path in core_files():
        name = module_name(path)
        if layer_of(name) not in ("shared", "contract", "registry"):
            continue
        for imported in all_imports(path):
            if imported.startswith("torchslim.") and layer_of(imported) == "engine":
                offenders.append(f"{name} imports {imported}")
    assert not offenders, offenders


def test_the_contract_imports_nothing_of_torchslim():
    offenders = [f"{module_name(p)} imports {m}" for p in (CORE / "hookspecs.py", CORE / "errors.py",
                                                          CORE / "schema.py")
                 for m in all_imports(p) if m.startswith("torchslim")]
    assert not offenders, offenders


def test_no_import_circles_inside_core():
    modules = {module_name(p): p for p in core_files()}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in top_level_imports(path):
            # an import of a.b.c also runs a and a.b; the package __init__ files are walked as modules
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                edges.add(imported)
        graph[name] = edges
    cycles = []
    state: dict[str, int] = {}

    def walk(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    # a package's __init__ re-exporting its own submodules is no circle: a submodule imports siblings only
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("folder", [CORE, PLUGINS])
def test_modules_stay_small(folder):
    big = {str(p.relative_to(ROOT)): n for p in folder.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400}
    assert not big, f"modules over 400 lines (split where the parts have names): {big}"


def test_old_import_paths_still_work_with_a_deprecation_warning():
    import importlib

    from torchslim.plugins.svd.modules import LowRankLinear

    with pytest.warns(DeprecationWarning, match="torchslim.lowrank.LowRankLinear moved to torchslim.plugins.svd.modules"):
        old = importlib.import_module("torchslim.lowrank").LowRankLinear
    assert old is LowRankLinear
    with pytest.warns(DeprecationWarning, match="applicable_forms"):
        assert callable(importlib.import_module("torchslim.decompose").applicable_kinds)
    with pytest.warns(DeprecationWarning, match="torchslim.demo.digits"):
        assert callable(importlib.import_module("torchslim.data").digits_loaders)
