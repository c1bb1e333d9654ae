"""Plugin manager: discovery through real entry points, broken plugins, allow/block lists, names."""

import re
import textwrap

import pytest
import torch
from pydantic import BaseModel

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
    with pytest.raises(torchslim.PluginError) as caught:
        registry.get("compress", "broken")
    message = str(caught.value)
    assert "is installed (tsbroken 0.1) but failed to load" in message and "no cuda here" in message
    assert "not installed" not in message  # no "is the plugin not installed?" after saying it is


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


def test_two_distributions_claiming_one_name_are_both_named(site, monkeypatch):
    make_distribution(site, "tsone", {"twin": "tsone_mod:Identity"}, {"tsone_mod": GOOD_MODULE})
    make_distribution(site, "tstwo", {"twin": "tstwo_mod:Identity"}, {"tstwo_mod": GOOD_MODULE})
    engine = torchslim.Engine()
    recipe = {"steps": [{"accelerate": {"method": "twin"}}], "evaluate": []}
    with pytest.raises(torchslim.RecipeError) as caught:  # whatever the order on sys.path
        engine.recipe(recipe)
    message = str(caught.value)
    assert "provided by 2 packages (tsone, tstwo)" in message
    assert "method: tsone:twin" in message and "TORCHSLIM_DISABLE_PLUGINS=tstwo:twin" in message
    # either way out works: qualify the method, or block one package's plugin
    qualified = {"steps": [{"accelerate": {"method": "tstwo:twin"}}], "evaluate": []}
    assert engine.recipe(qualified).steps[0].method == "tstwo:twin"
    monkeypatch.setenv("TORCHSLIM_DISABLE_PLUGINS", "tstwo:twin")
    blocked = torchslim.Engine()
    assert blocked.recipe(recipe).steps[0].method == "twin"
    assert blocked.registry.infos["twin"].distribution == "tsone"


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
    with pytest.raises(torchslim.RecipeError, match="is a plugin for compress, not a accelerate method"):
        engine.recipe({"steps": [{"accelerate": {"method": "scale"}}], "evaluate": []})


def test_a_typo_in_a_method_name_gets_a_did_you_mean():
    engine = bare_engine((Scale(), "scale"))
    with pytest.raises(torchslim.RecipeError, match="unknown compress method 'scael'; did you mean 'scale'"):
        engine.recipe({"steps": [{"compress": {"method": "scael"}}], "evaluate": []})


# ------------------------------------------------------------------------- checked when a plugin loads
MISSPELT = """
import torchslim

class Cluster:
    @torchslim.hookimpl
    def compres(self, model, step, context):
        return torchslim.StepResult(model=model)
"""

UNMARKED = """
import torchslim

class Cluster:
    def compres(self, model, step, context):
        return torchslim.StepResult(model=model)
"""

WRONG_ARGUMENT = """
import torchslim

class Cluster:
    @torchslim.hookimpl
    def compress(self, modle, step, context):
        return torchslim.StepResult(model=modle)
"""


@pytest.mark.parametrize("source, expected", [
    (MISSPELT, "@torchslim.hookimpl 'compres' is not a torchslim hook; did you mean 'compress'?"),
    (UNMARKED, "implements no torchslim hook; 'compres' looks like the hook 'compress'"),
    (WRONG_ARGUMENT, "hook 'compress' is called with (model, step, context), but the implementation asks for 'modle'"),
])
def test_author_mistakes_are_named_when_the_plugin_loads(site, monkeypatch, source, expected):
    module = f"tscluster_{abs(hash(source))}"  # a fresh module per case (imports are cached)
    make_distribution(site, "tscluster", {"typo_cluster": f"{module}:Cluster"}, {module: source})
    registry = PluginRegistry()
    (info,) = [p for p in registry.plugins() if p.name == "typo_cluster"]
    assert info.status == "error" and expected in info.error and "tscluster" in info.error
    with pytest.raises(torchslim.PluginError, match="failed to load"):
        registry.get("compress", "typo_cluster")
    monkeypatch.setenv("TORCHSLIM_STRICT_PLUGINS", "1")
    with pytest.raises(torchslim.PluginError, match=re.escape(expected)):
        PluginRegistry()


def test_runtime_registration_checks_the_contract_with_torchslim_errors():
    class WrongArgument:
        @torchslim.hookimpl
        def compress(self, model, stepp, context): ...

    class Unmarked:
        def compress(self, model, step, context): ...

    class NoMetrics:
        @torchslim.hookimpl
        def evaluate(self, model, context):
            return {}

    class BadStrength:
        class Options(BaseModel):
            amount: float = 0.5

        strength = ("sparsity", "higher")

        @torchslim.hookimpl
        def compress(self, model, step, context): ...

    engine = bare_engine()
    for plugin, expected in ((WrongArgument, "asks for 'stepp'"), (Unmarked, "'compress' is a torchslim hook but is not marked"),
                             (NoMetrics, "an evaluator declares metrics"),
                             (BadStrength, "strength names option 'sparsity', which its Options lack")):
        with pytest.raises(torchslim.PluginError, match=re.escape(expected)):
            engine.register(plugin, name="mine")
        assert "mine" not in engine.registry.infos


def test_built_ins_have_no_back_doors():
    registry = PluginRegistry()
    # the timing wrapper is an ordinary, listed plugin
    assert registry.infos["timing"].distribution == "torchslim"
    # svd's factor modules come through the register_module_kinds hook, like any plugin's
    svd_kinds = [k for k, owner in registry._kind_owner.items() if owner == "svd"]
    assert "torchslim.plugins.svd.modules.LowRankLinear" in svd_kinds
    assert "torchslim.lowrank.LowRankLinear" in svd_kinds  # the name 0.1 manifests hold
    # default evaluators are what is installed
    assert set(registry.default_evaluators()) >= {"accuracy", "params", "nonzeros", "macs", "latency", "size"}


def test_blocking_an_evaluator_drops_it_from_recipes_without_an_evaluate_list(monkeypatch):
    monkeypatch.setenv("TORCHSLIM_DISABLE_PLUGINS", "latency,timing")
    engine = torchslim.Engine()
    recipe = engine.recipe({"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5}}]})
    assert "latency" not in recipe.evaluate and "macs" in recipe.evaluate
    x = torch.randn(2, 4)
    result = engine.run(tiny_model(), recipe, example_inputs=(x,))
    assert "latency_ms" not in result.final and "macs" in result.final
    assert result.steps[0].seconds >= 0  # the engine times steps itself without the timing plugin
