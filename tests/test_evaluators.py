"""Built-in evaluators, run as a user runs them: through Engine.run on real digits data."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim.demo import digits_loaders
from torchslim.datacheck import check_classification_batch
from torchslim.measure import count_macs, count_nonzeros, count_params
from torchslim.recipe import Evaluation
from torchslim.zoo import MLP, DigitsCNN

from torchslim.plugins.evaluators import Accuracy, Latency, Macs, Nonzeros, Params, Size

EVALUATORS = {"accuracy": Accuracy, "params": Params, "nonzeros": Nonzeros, "macs": Macs, "latency": Latency,
              "size": Size}





class Constant(nn.Module):
    """Always predicts ``label`` (logits over ``classes``); has one parameter so it has a device."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.bias.expand(x.shape[0], -1).clone()
        logits[:, self.label] = 1.0
        return logits


def evaluate(name: str, model: nn.Module, **context) -> dict:
    return EVALUATORS[name]().evaluate(model=model, context=torchslim.RunContext(**context))


def test_every_evaluator_is_discovered_with_directions(engine):
    assert set(EVALUATORS) <= set(engine.registry.evaluators())
    directions = engine.registry.directions()
    assert directions["accuracy"] == "higher" and directions["sparsity"] == "higher"
    for metric in ("params", "nonzeros", "macs", "latency_ms", "size_bytes"):
        assert directions[metric] == "lower"


# ----------------------------------------------------------------------------- accuracy
def test_accuracy_of_constant_model_is_that_class_share(digits):
    _, _, x_test, y_test = digits
    loader = DataLoader(TensorDataset(x_test, y_test), batch_size=50)
    for label in (0, 7):
        share = float((y_test == label).float().mean())
        assert evaluate("accuracy", Constant(label), eval_data=loader) == {"accuracy": pytest.approx(share)}


def test_accuracy_honours_max_eval_batches(digits):
    _, _, x_test, y_test = digits
    loader = DataLoader(TensorDataset(x_test, y_test), batch_size=40)
    first_two = y_test[:80]
    got = evaluate("accuracy", Constant(3), eval_data=loader, evaluation=Evaluation(max_eval_batches=2))
    assert got["accuracy"] == pytest.approx(float((first_two == 3).float().mean()))
    assert got["accuracy"] != pytest.approx(float((y_test == 3).float().mean()))


def test_accuracy_metric_fn_replaces_top1(digits):
    _, _, x_test, y_test = digits
    loader = DataLoader(TensorDataset(x_test, y_test), batch_size=64)
    seen = []

    def metric_fn(model, data):
        seen.append(data)
        return 0.25

    assert evaluate("accuracy", Constant(0), eval_data=loader, metric_fn=metric_fn) == {"accuracy": 0.25}
    assert seen == [loader]


def test_accuracy_without_eval_data_is_empty():
    assert evaluate("accuracy", Constant(0)) == {}


def test_accuracy_ignores_minus_100_targets():
    x = torch.zeros(4, 3)
    y = torch.tensor([2, -100, 2, 1])
    assert evaluate("accuracy", Constant(2, classes=3), eval_data=[(x, y)]) == {"accuracy": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    "target, message",
    [
        (torch.full((4,), 10), r"eval_data batch 2: label 10 is out of range; the model outputs 10 classes, so labels must be in 0\.\.9"),
        (torch.full((4,), -1), r"label -1 is out of range"),
        (torch.zeros(4), r"eval_data batch 2: targets have dtype torch.float32; expected integer class indices"),
        (torch.zeros(3, dtype=torch.int64), r"the model produced 4 output row\(s\) but the batch has 3 target\(s\)"),
        (torch.zeros(4, 2, dtype=torch.int64), r"targets have shape \(4, 2\); .* expected class indices of shape \(4,\)"),
    ],
)
def test_accuracy_raises_data_error_at_first_bad_batch(target, message):
    good = (torch.zeros(4, 64), torch.zeros(4, dtype=torch.int64))
    bad = (torch.zeros(4, 64), target)
    with pytest.raises(torchslim.DataError, match=message):
        evaluate("accuracy", MLP(), eval_data=[good, bad, good])


def test_accuracy_data_errors_for_empty_loader_missing_target_and_non_logits():
    with pytest.raises(torchslim.DataError, match="eval_data yielded no batches"):
        evaluate("accuracy", MLP(), eval_data=[])
    with pytest.raises(torchslim.DataError, match="eval_data batch 1 has no target"):
        evaluate("accuracy", MLP(), eval_data=[torch.zeros(2, 64)])

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return {"scores": self.fc(x)}

    with pytest.raises(torchslim.DataError, match="the model returned dict; classification needs a logits tensor"):
        evaluate("accuracy", Named(), eval_data=[(torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64))])


def test_accuracy_scores_a_tuples_first_item_or_the_named_output():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Constant(1, classes=3)

        def forward(self, x):
            return self.inner(x), {"other": -self.inner(x)}

    data = [(torch.zeros(4, 8), torch.tensor([1, 1, 0, 2]))]
    assert evaluate("accuracy", Pair(), eval_data=data)["accuracy"] == 0.5
    # the same choice by callable: the second item's "other" entry never predicts class 1
    engine = torchslim.Engine()
    result = engine.run(Pair(), {"steps": [], "evaluate": ["accuracy"]}, eval_data=data,
                        output_fn=lambda out: out[1]["other"])
    assert result.baseline["accuracy"] == 0.25
    with pytest.raises(torchslim.DataError, match="evaluation.output='logits' is not in the model's output"):
        engine.run(Pair(), {"steps": [], "evaluate": ["accuracy"], "evaluation": {"output": "logits"}},
                   eval_data=data)


def test_accuracy_reads_logits_from_dict_output():
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Constant(1, classes=3)

        def forward(self, x):
            return {"logits": self.inner(x)}

    data = [(torch.zeros(2, 3), torch.tensor([1, 0]))]
    assert evaluate("accuracy", Dict(), eval_data=data) == {"accuracy": 0.5}


def test_check_classification_batch_accepts_soft_targets_only_when_asked():
    logits = torch.zeros(3, 5)
    soft = torch.full((3, 5), 0.2)
    check_classification_batch(logits, soft, "batch 1", allow_soft=True)
    with pytest.raises(torchslim.DataError, match="batch 1: targets have dtype torch.float32"):
        check_classification_batch(logits, soft, "batch 1")


# ----------------------------------------------------------------------------- counts
def test_params_nonzeros_macs_evaluators():
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.fc1.weight[:, :100] = 0
    assert evaluate("params", model) == {"params": count_params(model)}
    got = evaluate("nonzeros", model)
    assert got["nonzeros"] == count_nonzeros(model) <= count_params(model) - 100 * 128
    assert got["sparsity"] == pytest.approx(1 - got["nonzeros"] / count_params(model))
    assert evaluate("macs", model, example_inputs=(x,)) == {"macs": count_macs(model, (x,))}
    assert evaluate("macs", model) == {}


def test_latency_reports_batch_and_threads():
    torch.manual_seed(0)
    x = torch.randn(7, 1, 8, 8)
    got = evaluate("latency", DigitsCNN(width=8), example_inputs=(x,),
                   evaluation=Evaluation(latency_runs=3, latency_warmup=1, threads=2))
    assert set(got) == {"latency_ms", "latency_batch", "latency_threads"}
    assert 0 < got["latency_ms"] < 1000
    assert got["latency_batch"] == 7 and got["latency_threads"] == 2
    assert evaluate("latency", DigitsCNN(width=8)) == {}


# ----------------------------------------------------------------------------- through the engine
def test_engine_evaluates_requested_metrics_sanely(engine):
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = DigitsCNN(width=8)
    recipe = {"steps": [], "evaluate": ["accuracy", "params", "nonzeros", "macs", "latency"],
              "evaluation": {"latency_runs": 3, "latency_warmup": 1}}
    x = torch.randn(2, 1, 8, 8)
    result = engine.run(model, recipe, train_data=train, eval_data=test, example_inputs=(x,))
    base = result.baseline
    assert 0.0 <= base["accuracy"] <= 0.3  # untrained: about chance
    assert base["params"] == count_params(model)
    assert base["macs"] == count_macs(model, (x,))
    assert 0 < base["latency_ms"] < 1000 and base["latency_batch"] == 2
    assert "size_bytes" not in base
    assert "accuracy" in result.table()


def test_size_evaluator_reports_saved_bytes_and_shrinks_when_pruned():
    from torchslim import io, masks

    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    dense = evaluate("size", model)["size_bytes"]
    # float32 weights at least; the manifest and headers stay small next to them
    assert 4 * count_params(model) <= dense < 4 * count_params(model) + 256 * 1024
    assert dense == io.saved_size_bytes(model)
    for layer in (model.conv2, model.conv3, model.fc1):
        masks.apply_mask(layer, "weight", torch.rand(layer.weight.shape) > 0.9)
    assert evaluate("size", model)["size_bytes"] < dense / 2
