"""Installed-artifact tests: the built wheel in a fresh venv, and a third-party plugin package via pip.

The fresh venv gets torchslim only from the wheel. Its dependencies (torch is ~1 GB) are made
visible through a .pth file pointing at a folder of links to this environment's site-packages,
leaving out every torchslim distribution, so nothing of the working tree leaks in.
"""

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PKG = ROOT / "tests" / "plugin_pkg"


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def fresh_venv(path: Path) -> Path:
    """A new venv whose only torchslim will be the one we install; returns its python."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    target = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = path / "deps"
    deps.mkdir()
    for source in map(Path, site.getsitepackages()):
        for entry in source.iterdir():
            lowered = entry.name.lower()
            if lowered.startswith(("torchslim", "__editable__", "_torchslim")) or entry.suffix == ".pth":
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (target / "deps.pth").write_text(str(deps) + "\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", "-q", *args])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)])
    (found,) = out.glob("torchslim-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Path:
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "env")
    pip_install(python, str(wheel))
    return python


def test_wheel_in_fresh_venv_discovers_every_builtin(installed):
    where = run([installed, "-c", "import torchslim; print(torchslim.__file__)"]).stdout.strip()
    assert str(installed.parent.parent) in where, f"torchslim imported from {where}, not the wheel"
    proc = run([installed.parent / "torchslim", "plugins", "--json"])
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    declared = {"magnitude", "svd", "sgd", "accuracy", "params", "nonzeros", "macs", "latency", "size"}
    assert declared <= set(rows)
    assert all(rows[name]["status"] == "loaded" for name in declared), rows


def test_plugin_package_installed_with_pip_is_discovered_and_runs(installed):
    pip_install(installed, str(PLUGIN_PKG))
    script = (
        "import torch, torchslim\n"
        "from torch import nn\n"
        "engine = torchslim.Engine()\n"
        "assert 'halve' in engine.methods('compress'), engine.methods('compress')\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(4, 4))\n"
        "result = engine.run(model, {'steps': [{'compress': {'method': 'halve', 'factor': 0.25}}],"
        " 'evaluate': ['params']})\n"
        "assert torch.allclose(result.model[0].weight, model[0].weight * 0.25)\n"
        "assert 'halve-all' in engine.registry.strategies\n"
        "info = {p.name: p for p in engine.plugins()}['halve']\n"
        "print(info.distribution, info.version)\n"
    )
    proc = run([installed, "-c", script])
    assert proc.stdout.split() == ["torchslim-halve", "0.0.1"]
    listing = run([installed.parent / "torchslim", "strategies"]).stdout
    assert "halve-all" in listing and "torchslim-halve" in listing


def test_search_targets_a_cost_metric_from_an_installed_package(installed, tmp_path):
    pip_install(installed, str(PLUGIN_PKG))  # brings the evaluator nonzero_kib (lower is better)
    script = (
        "import json, torchslim\n"
        "from torchslim.testing import tiny_task\n"
        "task = tiny_task(train_steps=30)\n"
        "recipe = {'steps': [], 'evaluate': ['accuracy', 'nonzero_kib'],\n"
        "          'search': {'target': {'nonzero_kib': 0.5}, 'methods': [{'compress': {'method': 'magnitude'}}],\n"
        f"                     'grid': [0.3, 0.6, 0.9], 'retries': 0, 'plot': False, 'cache_dir': {str(tmp_path)!r}}}}}\n"
        "result = torchslim.Engine().run(task.model, recipe, **task.run_kwargs())\n"
        "print(json.dumps([result.baseline['nonzero_kib'], result.final['nonzero_kib'], result.search['target_metric']]))\n"
    )
    before, after, metric = json.loads(run([installed, "-c", script]).stdout.strip().splitlines()[-1])
    assert metric == "nonzero_kib"
    assert after <= 0.52 * before
