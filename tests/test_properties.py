"""Property-based tests (hypothesis): random recipes on random small architectures.

- a valid recipe runs to the end on any stack of Linear/Conv/BatchNorm/ReLU layers, or stops with a
  torchslim error of its own (never a raw exception escaping a plugin), and its outputs are finite;
- an invalid recipe (unknown stage or method, options of the wrong type or out of range, extra
  fields, bad targets, unknown evaluators or constraint metrics) raises a RecipeError before any work;
- in every case the input model is bit-identical afterwards.

Examples are bounded and derandomized so the suite is fast and stable; raise ``TORCHSLIM_HYPOTHESIS``
(e.g. ``TORCHSLIM_HYPOTHESIS=500``) to explore with more, random, examples.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import torchslim

from helpers import same_state, state_copy

_EXTRA = int(os.environ.get("TORCHSLIM_HYPOTHESIS", "0"))
SETTINGS = settings(
    max_examples=_EXTRA or 30, deadline=None, derandomize=not _EXTRA, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLASSES = 3
RECIPE_FIELDS = set(torchslim.Recipe.model_fields)
try:
    import torch_pruning  # noqa: F401

    HAS_TP = True
except ImportError:  # pragma: no cover - optional dependency
    HAS_TP = False


@pytest.fixture(scope="module")
def engine() -> torchslim.Engine:
    return torchslim.Engine()


# ------------------------------------------------------------------------------------ architectures
@st.composite
def architectures(draw) -> tuple[nn.Module, torch.Tensor]:
    """A random Sequential of Linear/BN/ReLU/Dropout, or Conv2d/BN/ReLU then a Linear head; and inputs."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        width = draw(st.integers(1, 12))
        x = torch.randn(8, width, generator=torch.Generator().manual_seed(seed))
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["linear", "linear", "relu", "bn", "dropout"]))
            if kind == "linear":
                out = draw(st.integers(1, 16))
                layers.append(nn.Linear(width, out, bias=draw(st.booleans())))
                width = out
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "bn":
                layers.append(nn.BatchNorm1d(width))
            else:
                layers.append(nn.Dropout(0.1))
        layers.append(nn.Linear(width, CLASSES))
    else:
        channels, size = draw(st.integers(1, 4)), draw(st.sampled_from([4, 6]))
        x = torch.randn(8, channels, size, size, generator=torch.Generator().manual_seed(seed))
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["conv", "conv", "bn", "relu"]))
            if kind == "conv":
                out, k = draw(st.integers(1, 12)), draw(st.sampled_from([1, 3]))
                groups = draw(st.sampled_from([g for g in (1, 2, channels) if channels % g == 0 and out % g == 0]))
                layers.append(nn.Conv2d(channels, out, k, padding=k // 2, groups=groups, bias=draw(st.booleans())))
                channels = out
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(channels))
            else:
                layers.append(nn.ReLU())
        layers += [nn.Flatten(), nn.Linear(channels * size * size, CLASSES)]
    model = nn.Sequential(*layers)
    if draw(st.booleans()):  # trained-looking BN statistics, not the init ones
        model.train()
        with torch.no_grad():
            model(x)
    return model.eval(), x


# ------------------------------------------------------------------------------------ valid recipes
def _magnitude(draw) -> dict:
    pattern = draw(st.sampled_from(["unstructured", "structured", "2:4", "1:4"]))
    body = {"method": "magnitude", "pattern": pattern}
    if ":" not in pattern:
        body["sparsity"] = draw(st.floats(0.0, 0.95))
        body["scope"] = draw(st.sampled_from(["layer", "global"] + (["row"] if pattern == "unstructured" else [])))
    if pattern == "unstructured" and draw(st.booleans()):
        body["rounds"] = draw(st.integers(2, 3))
    body["criterion"] = draw(st.sampled_from(["weight", "activation"]))
    body["reconstruct"] = draw(st.booleans())
    body["calibration_batches"] = 2
    return {"compress": body}


def _svd(draw) -> dict:
    body = {"method": "svd", "measure_latency": False,
            "factorization": draw(st.sampled_from(["weight", "spatial", "auto"]))}
    rule = draw(st.sampled_from(["rank_ratio", "rank", "energy", "mac_ratio"]))
    body[rule] = draw({"rank_ratio": st.floats(0.05, 1.0), "rank": st.integers(1, 8),
                       "energy": st.floats(0.5, 1.0), "mac_ratio": st.floats(0.3, 1.0)}[rule])
    if draw(st.booleans()):
        body.update(data_aware=True, calibration_batches=2)
    return {"accelerate": body}


def _channel(draw) -> dict:
    return {"accelerate": {"method": "channel", "ratio": draw(st.floats(0.0, 0.6)),
                           "scope": draw(st.sampled_from(["uniform", "global"])),
                           "round_to": draw(st.sampled_from([None, 2, 4])),
                           "importance": draw(st.sampled_from(["l1", "l2", "bn_scale", "taylor"]))}}


def _sgd(draw) -> dict:
    return {"finetune": {"method": "sgd", "steps": draw(st.integers(1, 3)), "lr": draw(st.floats(1e-4, 0.1)),
                         "optimizer": draw(st.sampled_from(["sgd", "adamw"]))}}


@st.composite
def valid_steps(draw) -> dict:
    makers = [_magnitude, _svd, _sgd] + ([_channel] if HAS_TP else [])
    return draw(st.sampled_from(makers))(draw)


@st.composite
def valid_recipes(draw) -> dict:
    steps = draw(st.lists(valid_steps(), min_size=0, max_size=3))
    # channel pruning needs plain weights: it must come before masks (magnitude) in a recipe
    steps.sort(key=lambda s: 0 if s.get("accelerate", {}).get("method") == "channel" else 1)
    evaluate = draw(st.lists(st.sampled_from(["accuracy", "params", "nonzeros", "macs", "size"]),
                             unique=True, max_size=3))
    return {"steps": steps, "evaluate": evaluate, "seed": draw(st.integers(0, 100))}


# ------------------------------------------------------------------------------------ invalid recipes
NOT_A_NUMBER = st.sampled_from(["abc", [], {}, [0.5], {"v": 1}, None, "", "1,5"])
BAD_OPTION = {  # (stage, method) -> option -> strategy of values that option rejects
    ("compress", "magnitude"): {
        "sparsity": st.one_of(NOT_A_NUMBER, st.sampled_from([-0.1, 1.0, 1.5, 1e9, math.nan, math.inf, -math.inf])),
        "scope": st.sampled_from(["everywhere", 3, None, ["layer"]]),
        "pattern": st.sampled_from(["3:2", "0:4", "4:4", "half", 2, None, "2-4"]),
        "rounds": st.sampled_from([0, -1, 101, 1.5, "two", None]),
        "calibration_batches": st.sampled_from([0, -3, "many", None]),
    },
    ("accelerate", "svd"): {
        "rank_ratio": st.one_of(NOT_A_NUMBER, st.sampled_from([0.0, -0.5, 1.01, math.nan, math.inf])),
        "rank": st.sampled_from([0, -1, 2.5, "full", []]),
        "energy": st.sampled_from([0.0, 1.5, -1.0, math.nan, "most"]),
        "kind": st.sampled_from(["diagonal", 1, None]),
        "rank_multiple": st.sampled_from([0, 257, -8, "eight"]),
    },
    ("finetune", "sgd"): {
        "lr": st.one_of(NOT_A_NUMBER, st.sampled_from([0.0, -0.1, 11.0, math.nan, math.inf])),
        "epochs": st.sampled_from([0, -1, 10_001, 0.5, "one"]),
        "optimizer": st.sampled_from(["adam9", "", 1]),
        "momentum": st.sampled_from([1.0, -0.1, 2, "fast"]),
    },
}


@st.composite
def invalid_recipes(draw) -> tuple[dict, str]:
    """A valid recipe with exactly one thing made invalid; returns (recipe, what was broken)."""
    recipe = copy.deepcopy(draw(valid_recipes()))
    if not recipe["steps"]:
        recipe["steps"] = [{"compress": {"method": "magnitude", "sparsity": 0.5}}]
    steps = recipe["steps"]
    i = draw(st.integers(0, len(steps) - 1))
    (stage, body), = steps[i].items()
    kinds = ["option-value", "extra-option", "unknown-method", "wrong-stage", "unknown-stage", "targets",
             "step-extra", "recipe-extra", "evaluator", "constraint", "steps-type", "body-type"]
    kind = draw(st.sampled_from(kinds))
    if kind == "option-value" and (stage, body["method"]) in BAD_OPTION:
        table = BAD_OPTION[(stage, body["method"])]
        name = draw(st.sampled_from(sorted(table)))
        body[name] = draw(table[name])  # pydantic checks every given field, so the bad value always counts
        return recipe, f"option {name}={body[name]!r}"
    if kind in ("option-value", "extra-option"):
        key = draw(st.sampled_from(["sparsityy", "Rank", "learning_rate", "foo", "method2"]))
        body[key] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
        return recipe, f"extra option {key}"
    if kind == "unknown-method":
        body["method"] = draw(st.sampled_from(["magnitud", "SVD", "prune", "", "sgd2", "int4-gptq"]))
        return recipe, f"unknown method {body['method']!r}"
    if kind == "wrong-stage":
        other = {"compress": "finetune", "accelerate": "compress", "finetune": "accelerate"}[stage]
        steps[i] = {other: body}
        return recipe, f"method {body['method']} under {other}"
    if kind == "unknown-stage":
        steps[i] = {draw(st.sampled_from(["quantize", "prune", "Compress", "evaluate"])): body}
        return recipe, "unknown stage"
    if kind == "targets":
        body["targets"] = draw(st.sampled_from([
            {"include": ["no_such_layer*"]}, {"types": ["Conv9d"]}, {"include": 5}, {"layers": ["0"]},
            "everything", {"include": [None]}, {"exclude": ["*"]},
        ]))
        return recipe, f"targets {body['targets']!r}"
    if kind == "step-extra":
        steps[i] = {stage: body, draw(st.sampled_from(["name", "when", "compress"])): {"x": 1}}
        return recipe, "a step with two keys"
    if kind == "recipe-extra":
        recipe[draw(st.sampled_from(["step", "stages", "Steps", "evaluators"]))] = []
        return recipe, "unknown recipe field"
    if kind == "evaluator":
        recipe["evaluate"] = ["accuracy", draw(st.sampled_from(["acc", "flops", "", "latency_ms"]))]
        return recipe, f"unknown evaluator {recipe['evaluate'][1]!r}"
    if kind == "constraint":
        recipe["constraints"] = draw(st.sampled_from([
            {"max_drop": {"accuracy": -0.1}}, {"max_ratio": {"macs": 0}}, {"max_drop": {"bleu": 0.1}},
            {"max_ratio": {"macs": "half"}}, {"min_drop": {"accuracy": 0.1}},
        ]))
        return recipe, f"constraints {recipe['constraints']!r}"
    if kind == "steps-type":
        recipe["steps"] = draw(st.sampled_from([{"compress": body}, "magnitude", 3, [["compress", body]]]))
        return recipe, "steps not a list of steps"
    steps[i] = {stage: draw(st.sampled_from([body["method"], [body["method"]], None, 0.5]))}
    return recipe, "step body not a mapping"


# ------------------------------------------------------------------------------------ helpers
def _snapshot(model: nn.Module) -> tuple:
    return (state_copy(model), repr(model), [(n, p.requires_grad) for n, p in model.named_parameters()],
            [m.training for m in model.modules()])


def _unchanged(model: nn.Module, snapshot: tuple) -> bool:
    state, text, grads, flags = snapshot
    return (same_state(state, model.state_dict()) and repr(model) == text
            and [(n, p.requires_grad) for n, p in model.named_parameters()] == grads
            and [m.training for m in model.modules()] == flags)


def _data(x: torch.Tensor) -> list:
    labels = torch.arange(len(x)) % CLASSES
    return [(x[:4], labels[:4]), (x[4:], labels[4:])]


def _raw(exc: BaseException) -> BaseException | None:
    cause = exc.__cause__
    if isinstance(exc, torchslim.StepError) and cause is not None and not isinstance(cause, torchslim.TorchslimError):
        return cause
    return None


# ------------------------------------------------------------------------------------ properties
@SETTINGS
@given(arch=architectures(), recipe=valid_recipes())
def test_valid_recipes_run_on_random_architectures(engine, arch, recipe):
    model, x = arch
    snapshot = _snapshot(model)
    data = _data(x)
    try:
        result = engine.run(model, recipe, train_data=data, eval_data=data, example_inputs=(x[:2],))
    except torchslim.RecipeError as exc:
        raise AssertionError(f"a valid recipe was rejected: {exc}") from exc
    except torchslim.TorchslimError as exc:
        raw = _raw(exc)
        assert raw is None, f"raw {type(raw).__name__} escaped: {exc}"
        event(f"stopped with {type(exc).__name__}")
    else:
        event("ran")
        result.model.eval()
        with torch.no_grad():
            out = result.model(x)
        assert out.shape == (len(x), CLASSES) and bool(torch.isfinite(out).all())
        for metrics in result.metrics.values():
            assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert _unchanged(model, snapshot), "the input model changed"


@SETTINGS
@given(arch=architectures(), broken=invalid_recipes())
def test_invalid_recipes_raise_a_recipe_error_and_leave_the_model_alone(engine, arch, broken):
    model, x = arch
    recipe, what = broken
    snapshot = _snapshot(model)
    data = _data(x)
    with pytest.raises(torchslim.RecipeError) as excinfo:
        engine.run(model, recipe, train_data=data, eval_data=data, example_inputs=(x[:2],))
    assert str(excinfo.value).strip(), f"empty message for {what}"
    event(what.split(" ")[0])
    assert _unchanged(model, snapshot), "the input model changed"


@SETTINGS
@given(recipe=st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=3),
                        st.text(max_size=20),
                        st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in RECIPE_FIELDS),
                                        st.integers(), min_size=1, max_size=3)))
def test_arbitrary_objects_as_recipes_raise_torchslim_errors(engine, recipe):
    model = nn.Sequential(nn.Linear(3, 2))
    snapshot = _snapshot(model)
    with pytest.raises(torchslim.TorchslimError):
        engine.run(model, recipe, example_inputs=(torch.zeros(1, 3),))
    assert _unchanged(model, snapshot)


def test_a_validated_recipe_runs_when_passed_back(engine):
    """Options validated once (only the fields the user set count as set) validate again the same way."""
    recipe = engine.recipe({"steps": [{"compress": {"method": "magnitude", "threshold": 0.05}}], "evaluate": []})
    engine.run(nn.Sequential(nn.Linear(4, 4)), recipe, example_inputs=(torch.zeros(1, 4),))
