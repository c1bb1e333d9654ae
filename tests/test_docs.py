"""Docs kept honest by tests (after datasette's tests/test_docs.py).

- the generated pages (docs/recipes.md, hooks.md, cli.md) equal a fresh generation;
- every hook in core/hookspecs.py has a ``## <hook>`` section in docs/hooks.md and a test whose name
  contains ``hook_<hook>``;
- every option of every method plugin has a description;
- links between pages resolve, and ``mkdocs build --strict`` passes;
- code blocks marked runnable run as written, and YAML recipes in the docs validate.

Runnable blocks are marked by an HTML comment on the line before the fence (invisible on the site):
``<!-- test -->`` before a ``python`` block executes it (the blocks of one page share one namespace and
run in order, in a temporary working directory); before a ``console`` block it runs each ``$ `` line
and expects exit code 0. ``<!-- test: file NAME -->`` writes the block into NAME first.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import torchslim
from helpers import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE_PAGES = ["getting-started.md", "plugin-authors.md"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("torchslim_docs_gen", DOCS / "_gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
HOOKS = [name for name, _, _ in gen.hook_functions()]


# ---------------------------------------------------------------------------------- markdown parsing
@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    marker: str  # "" (not runnable), "test" or "file NAME"


_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
_MARKER = re.compile(r"^<!--\s*test(?::\s*(file\s+\S+))?\s*-->$")


def code_blocks(page: Path) -> list[Block]:
    """Every top-level fenced code block of a Markdown page, with the test marker before it."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language, start = match.group(1), match.group(2), i
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(previous)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        kind = "" if marker is None else " ".join((marker.group(1) or "test").split())
        blocks.append(Block(page.name, start + 1, language, "\n".join(body) + "\n", kind))
    return blocks


def prose(page: Path) -> str:
    """The page without its fenced code blocks and inline code (links inside code are not links)."""
    text = re.sub(r"^(```+|~~~+).*?^\1[ \t]*$", "", page.read_text(), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (Python-Markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    return {slugify(m.group(1).strip(), "-") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose(page), re.M)}


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# ---------------------------------------------------------------------------------- generated pages
@pytest.mark.parametrize("name", sorted(gen.PAGES))
def test_generated_page_is_up_to_date(name):
    fresh = gen.PAGES[name]()
    committed = (DOCS / name).read_text() if (DOCS / name).is_file() else ""
    assert committed == fresh, f"docs/{name} is stale or missing: run `python docs/_gen.py` and commit it"


def test_recipe_reference_lists_every_field_and_method():
    text = (DOCS / "recipes.md").read_text()
    models = gen.recipe_models()
    assert {m.__name__ for m in models} >= {"Recipe", "Step", "Targets", "Constraints", "Evaluation"}
    for model in models:
        assert f"## {model.__name__}" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} missing from docs/recipes.md"
    plugins, strategies = gen.documented_plugins(with_strategies=True)
    for strategy in strategies:
        assert f"### {strategy.name}" in text
    for info in plugins:
        stage = gen._stage_of(info)
        if not stage:  # registers strategies or module kinds only
            continue
        if stage == "evaluate":
            assert f"| `{info.name}` |" in text
            continue
        assert f"### {stage}: {info.name}" in text
        options = getattr(info.obj, "Options", None)
        for name, field in (options.model_fields.items() if options is not None else ()):
            assert f"| `{field.alias or name}` |" in text, f"{info.name}.{name} missing from docs/recipes.md"


# ---------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_documented_section(hook):
    text = (DOCS / "hooks.md").read_text()
    assert re.search(rf"^## {re.escape(hook)}$", text, re.M), f"docs/hooks.md has no '## {hook}' section"


@functools.lru_cache(maxsize=1)
def _test_names() -> frozenset[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return frozenset(names)


def _tests_hook(test_name: str, hook: str) -> bool:
    # ``test_hook_compress_accelerate_finetune_...`` covers all three hooks it names after ``hook_``
    if "hook_" not in test_name:
        return False
    after = "_" + test_name.split("hook_", 1)[1] + "_"
    return f"_{hook}_" in after


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    names = _test_names()
    assert any(_tests_hook(name, hook) for name in names), (
        f"no test covers hook {hook!r}: add a test function named test_hook_{hook}_... under tests/"
    )


def test_hook_test_rule_is_strict():
    assert _tests_hook("test_hook_compress_accelerate_finetune_call_only", "accelerate")
    assert _tests_hook("test_hook_register_strategies_runs_by_name", "register_strategies")
    assert not _tests_hook("test_compress_works", "compress")
    assert not _tests_hook("test_hook_compression_ratio", "compress")


# ---------------------------------------------------------------------------------- options
def _method_options():
    found = []
    for info in gen.documented_plugins():
        options = getattr(info.obj, "Options", None)
        if options is not None:
            found.append((info.name, options))
    return found


def test_every_method_option_has_a_description():
    missing = [f"{method}.{name}" for method, options in _method_options()
               for name, field in options.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"Options fields without description= (the docs are generated from them): {missing}"


def test_each_method_marks_at_most_one_strength_knob():
    for method, options in _method_options():
        knobs = [name for name, field in options.model_fields.items() if gen.is_strength(field)]
        assert len(knobs) <= 1, f"{method} marks several strength knobs: {knobs}"


def test_recipe_model_fields_have_descriptions():
    missing = [f"{model.__name__}.{name}"
               for model in gen.recipe_models()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"recipe fields without description= (docs/recipes.md shows them): {missing}"


# ---------------------------------------------------------------------------------- links and build
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_between_pages_resolve():
    broken = []
    for page in pages():
        for target in _LINK.findall(prose(page)):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(DOCS)} -> {target}"
            if not dest.is_file():
                broken.append(f"{where}: no such page")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with id {anchor!r}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    in_nav = set(walk(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert on_disk - in_nav == set(), f"pages missing from the nav in mkdocs.yml: {sorted(on_disk - in_nav)}"
    assert in_nav - on_disk == set(), f"nav entries without a page: {sorted(in_nav - on_disk)}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning; built on a copy so the build's regeneration cannot hide drift."""
    pytest.importorskip("mkdocs")
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config.update(docs_dir=str(docs), site_dir=str(tmp_path / "site"), hooks=[str(DOCS / "_gen.py")])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    mkdocs = Path(sys.executable).with_name("mkdocs")
    command = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    start = time.perf_counter()
    proc = subprocess.run([*command, "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "hooks" / "index.html").is_file()
    assert not list((tmp_path / "site").rglob("*.py")), "the generator was copied into the site"
    assert time.perf_counter() - start < 60


# ---------------------------------------------------------------------------------- runnable blocks
def test_runnable_blocks_are_found():
    marked = [b for page in RUNNABLE_PAGES for b in code_blocks(DOCS / page) if b.marker]
    assert {b.page for b in marked} == set(RUNNABLE_PAGES)
    assert all(b.language in ("python", "console", "yaml", "toml", "text") for b in marked)


@pytest.fixture
def one_thread():
    """Run the examples on one thread: on a shared CI machine torch's thread pool spins and wastes CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_runnable_blocks_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    for name in ("TORCHSLIM_PLUGINS", "TORCHSLIM_DISABLE_PLUGINS", "TORCHSLIM_STRICT_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    namespace: dict = {"__name__": f"docs_{Path(page).stem.replace('-', '_')}"}
    ran = 0
    for block in code_blocks(DOCS / page):
        where = f"docs/{page}:{block.line}"
        if block.marker.startswith("file "):
            (tmp_path / block.marker[5:]).write_text(block.code)
        elif block.marker == "test" and block.language == "python":
            exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the docs' own examples
            ran += 1
        elif block.marker == "test" and block.language == "console":
            for line in block.code.splitlines():
                if line.startswith("$ "):
                    proc = subprocess.run(line[2:], shell=True, cwd=tmp_path, env=env,
                                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
                    assert proc.returncode == 0, f"{where}: {line}\n{proc.stdout}\n{proc.stderr}"
                    ran += 1
        elif block.marker == "test":
            pytest.fail(f"{where}: cannot run a {block.language!r} block")
    assert ran > 0


def test_yaml_recipes_in_docs_validate():
    engine = torchslim.Engine()
    checked = 0
    for page in pages():
        for block in code_blocks(page):
            if block.language not in ("yaml", "yml"):
                continue
            data = yaml.safe_load(block.code)
            if isinstance(data, dict) and "steps" in data:
                try:
                    engine.recipe(data)
                except torchslim.TorchslimError as exc:
                    pytest.fail(f"docs/{page.relative_to(DOCS)}:{block.line}: recipe does not validate: {exc}")
                checked += 1
    assert checked > 0
