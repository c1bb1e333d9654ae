"""Recipes: parsing, and a clear error for every kind of bad recipe, before any work is done."""

import pytest

import torchslim
from helpers import Scale, WeightNorm, bare_engine, tiny_model

GOOD = {
    "steps": [{"compress": {"method": "scale", "factor": 0.5, "targets": {"include": ["0"]}}}],
    "evaluate": ["weightnorm"],
    "constraints": {"max_drop": {"score": 100.0}},
}


@pytest.fixture
def engine():
    return bare_engine((Scale(), "scale"), (WeightNorm(), "weightnorm"))


def test_recipe_from_yaml_json_and_dict_agree(tmp_path):
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(
        "steps:\n  - compress: {method: scale, factor: 0.5, targets: {include: ['0']}}\n"
        "evaluate: [weightnorm]\nconstraints: {max_drop: {score: 100.0}}\n"
    )
    json_path = tmp_path / "r.json"
    json_path.write_text(torchslim.Recipe.from_dict(GOOD).model_dump_json())
    from_yaml = torchslim.Recipe.from_yaml(yaml_path)
    assert from_yaml == torchslim.Recipe.from_dict(GOOD) == torchslim.Recipe.from_file(json_path)
    assert from_yaml.steps[0].stage == "compress" and from_yaml.steps[0].options == {"factor": 0.5}


def test_recipe_round_trips_through_to_dict(engine):
    recipe = engine.recipe(GOOD)
    again = engine.recipe(recipe.to_dict())
    assert again.steps[0].options == recipe.steps[0].options


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"steps": [{"shrink": {"method": "scale"}}]}, ["step 1 (shrink/scale)", "stage", "compress, accelerate, finetune"]),
        ({"steps": [{"compress": {"method": "nosuch"}}]}, ["step 1 (compress/nosuch)", "unknown compress method 'nosuch'", "installed: scale", "pip install"]),
        ({"steps": [{"compress": {"method": "scale", "factor": "big"}}]}, ["step 1 (compress/scale)", "factor='big'", "valid number"]),
        ({"steps": [{"compress": {"method": "scale", "factor": 3.0}}]}, ["step 1 (compress/scale)", "factor=3.0", "less than or equal to 2"]),
        ({"steps": [{"compress": {"method": "scale", "factr": 0.3}}]}, ["step 1 (compress/scale)", "unknown option(s) factr", "accepts: factor"]),
        ({"steps": [], "evaluation": {"latency_runs": 0}}, ["evaluation.latency_runs=0", "greater than or equal to 1"]),
        ({"steps": [], "colour": "red"}, ["colour='red'", "not a known field"]),
        ({"steps": [{"compress": {"method": "scale"}}], "evaluate": ["nosuch"]}, ["evaluate:", "unknown evaluator 'nosuch'", "weightnorm"]),
        ({"steps": [], "evaluate": ["weightnorm"], "constraints": {"max_drop": {"bleu": 1}}}, ["constraints.max_drop.bleu", "no installed evaluator produces"]),
        ({"steps": [{"compress": {"factor": 0.5}}]}, ["step 1", "names no 'method'"]),
    ],
)
def test_bad_recipe_gives_clear_error(engine, bad, expected):
    with pytest.raises(torchslim.RecipeError) as info:
        engine.recipe(bad)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_targets_matching_no_module_are_rejected_before_work(engine):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {"steps": [{"compress": {"method": "scale", "targets": {"include": ["encoder.*"]}}}], "evaluate": []}
    with pytest.raises(torchslim.RecipeError) as info:
        engine.run(model, recipe)
    message = str(info.value)
    assert "step 1 (compress/scale)" in message and "encoder.*" in message and "named like: 0, 2" in message
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())


def test_unknown_strategy_or_missing_file_is_a_recipe_error(engine):
    with pytest.raises(torchslim.RecipeError, match="neither an existing recipe file nor a strategy"):
        engine.recipe("no-such-strategy")
    with pytest.raises(torchslim.RecipeError, match="does not exist"):
        torchslim.Recipe.from_file("missing.yaml")


def test_invalid_yaml_is_a_recipe_error():
    with pytest.raises(torchslim.RecipeError, match="not valid YAML"):
        torchslim.Recipe.from_yaml("steps: [\n  - {")
