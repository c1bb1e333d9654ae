"""Plugin manager: discovery through real entry points, broken plugins, allow/block lists, names."""

import textwrap

import pytest

import torchslim
from torchslim.registry import PluginRegistry
from helpers import Scale, WeightNorm, bare_engine, tiny_model


def make_distribution(root, dist, entry_points, modules=None):
    """Write a real (unpacked) distribution onto ``root``: dist-info with entry points, plus modules."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[torchslim]\n{lines}\n")
    for name, source in (modules or {}).items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


GOOD_MODULE = """
import torchslim

class Identity:
    @torchslim.hookimpl
    def accelerate(self, model, step, context):
        return torchslim.StepResult(model=model)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("TORCHSLIM_PLUGINS", "TORCHSLIM_DISABLE_PLUGINS", "TORCHSLIM_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_builtins_are_discovered_through_entry_points():
    registry = PluginRegistry()
    builtin = {p.name: p for p in registry.plugins() if p.distribution == "torchslim"}
    assert {"magnitude", "svd", "sgd", "accuracy", "macs"} <= set(builtin)


def test_broken_plugin_is_reported_and_others_still_load(site):
    make_distribution(site, "tsgood", {"ident": "tsgood_mod:Identity"}, {"tsgood_mod": GOOD_MODULE})
    make_distribution(site, "tsbroken", {"broken": "tsbroken_mod:Thing"}, {"tsbroken_mod": "raise ImportError('no cuda here')"})
    registry = PluginRegistry()
    assert "ident" in registry.methods("accelerate")
    (failed,) = [p for p in registry.plugins() if p.name == "broken"]
    assert failed.status == "error"
    assert "Error importing plugin 'broken'" in failed.error and "tsbroken" in failed.error and "no cuda here" in failed.error
    with pytest.raises(torchslim.PluginError, match="installed but error"):
        registry.get("compress", "broken")


def test_strict_mode_makes_a_broken_plugin_fatal(site, monkeypatch):
    make_distribution(site, "tsbroken", {"broken": "tsbroken_mod:Thing"}, {"tsbroken_mod": "raise ImportError('nope')"})
    monkeypatch.setenv("TORCHSLIM_STRICT_PLUGINS", "1")
    monkeypatch.setenv("TORCHSLIM_PLUGINS", "broken")
    with pytest.raises(torchslim.PluginError, match="Error importing plugin 'broken'.*nope"):
        PluginRegistry()


def test_allow_and_block_lists(site, monkeypatch):
    make_distribution(site, "tsgood", {"ident": "tsgood_mod:Identity"}, {"tsgood_mod": GOOD_MODULE})
    monkeypatch.setenv("TORCHSLIM_DISABLE_PLUGINS", "ident,svd")
    blocked = PluginRegistry()
    assert "ident" not in blocked.methods("accelerate") and "svd" not in blocked.methods("accelerate")
    assert {p.name: p.status for p in blocked.plugins()}["ident"] == "disabled"
    monkeypatch.delenv("TORCHSLIM_DISABLE_PLUGINS")
    monkeypatch.setenv("TORCHSLIM_PLUGINS", "ident, accuracy")
    allowed = PluginRegistry()
    assert sorted(allowed.infos) == ["accuracy", "ident"]


def test_two_distributions_claiming_one_name_are_both_named(site):
    make_distribution(site, "tsone", {"twin": "tsone_mod:Identity"}, {"tsone_mod": GOOD_MODULE})
    make_distribution(site, "tstwo", {"twin": "tstwo_mod:Identity"}, {"tstwo_mod": GOOD_MODULE})
    registry = PluginRegistry()
    (failed,) = [p for p in registry.plugins() if p.name == "twin" and p.status == "error"]
    assert "tsone" in failed.error and "tstwo" in failed.error and "two plugins claim the name 'twin'" in failed.error
    with pytest.raises(torchslim.PluginError, match="tsone"):
        PluginRegistry(strict=True, allow=["twin"])


def test_runtime_registration_runs_through_a_recipe_and_unregisters():
    engine = bare_engine((WeightNorm(), "weightnorm"))
    engine.register(Scale, name="scale")  # a class is instantiated
    assert engine.methods("compress") == ["scale"]
    result = engine.run(tiny_model(), {"steps": [{"compress": {"method": "scale"}}], "evaluate": ["weightnorm"]})
    assert result.final["l1"] < result.baseline["l1"]
    with pytest.raises(torchslim.PluginError, match=r"two plugins claim the name 'scale': \(runtime\) and \(runtime\)"):
        engine.register(Scale(), name="scale")
    engine.unregister("scale")
    with pytest.raises(torchslim.RecipeError, match="unknown compress method 'scale'; installed: none"):
        engine.recipe({"steps": [{"compress": {"method": "scale"}}], "evaluate": []})


def test_plugin_with_two_stages_or_bad_options_is_refused():
    class TwoStages:
        @torchslim.hookimpl
        def compress(self, model, step, context): ...

        @torchslim.hookimpl
        def accelerate(self, model, step, context): ...

    class BadOptions:
        Options = dict

        @torchslim.hookimpl
        def compress(self, model, step, context): ...

    engine = bare_engine()
    with pytest.raises(torchslim.PluginError, match="several stages"):
        engine.register(TwoStages(), name="two")
    with pytest.raises(torchslim.PluginError, match="Options attribute must be a pydantic BaseModel"):
        engine.register(BadOptions(), name="bad")
    assert engine.methods("compress") == []


def test_method_of_another_stage_is_explained():
    engine = bare_engine((Scale(), "scale"))
    with pytest.raises(torchslim.RecipeError, match="implements compress, not accelerate"):
        engine.recipe({"steps": [{"accelerate": {"method": "scale"}}], "evaluate": []})
