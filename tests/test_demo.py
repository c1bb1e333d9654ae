"""The demo: trains on real digits, runs every installed demo method, prints the before/after table."""

import torchslim
from torchslim.demo import DEMO_STEPS, demo_recipe, run_demo


def test_demo_recipe_uses_every_installed_demo_method():
    engine = torchslim.Engine()
    recipe = demo_recipe(engine)
    methods = [next(iter(step.values()))["method"] for step in recipe["steps"]]
    assert methods == [next(iter(s.values()))["method"] for s in DEMO_STEPS]  # magnitude, svd, sgd all installed
    engine.recipe(recipe)  # validates


def test_demo_runs_and_shows_each_step(capsys):
    result = run_demo(epochs=4)
    out = capsys.readouterr().out
    for label in ("baseline", "1 compress/magnitude", "2 accelerate/svd", "3 finetune/sgd"):
        assert label in out
    assert result.final["nonzeros"] < 0.5 * result.baseline["nonzeros"]
    assert result.final["macs"] < result.baseline["macs"]
    assert result.final["size_bytes"] < 0.5 * result.baseline["size_bytes"]
    assert result.final["accuracy"] > 0.9
