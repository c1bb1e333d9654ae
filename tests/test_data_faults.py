"""Bad data fails at the first bad batch with an error that says what was expected, via Engine.run.

Evaluation faults surface while the baseline is evaluated; fine-tuning faults inside the ``sgd``
step, where the engine wraps the plugin's :class:`~torchslim.DataError` in a
:class:`~torchslim.StepError` naming the step (the message still carries the data error).
"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchslim

from zoo_models import ZOO

RECIPE_EVAL = {"steps": [], "evaluate": ["accuracy"]}
RECIPE_TRAIN = {"steps": [{"finetune": {"method": "sgd", "epochs": 1}}], "evaluate": ["accuracy"]}


class CountingLoader:
    """A loader that counts the batches drawn from it, to prove a fault stops at the first bad batch."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.drawn = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            self.drawn += 1
            yield batch


@pytest.fixture(scope="module")
def engine() -> torchslim.Engine:
    return torchslim.Engine()


@pytest.fixture
def case():
    return ZOO["mlp"]()  # inputs (N, 12) float32, 4 classes


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = 8) -> list:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _run(engine, case, mode: str, loader) -> None:
    if mode == "eval":
        engine.run(case.model, RECIPE_EVAL, eval_data=loader, example_inputs=case.example_inputs)
    else:
        engine.run(case.model, RECIPE_TRAIN, train_data=loader, eval_data=case.loader(),
                   example_inputs=case.example_inputs)


def _data_error(excinfo, mode: str) -> str:
    """The message of the DataError raised (eval) or wrapped by the engine in a StepError (train)."""
    exc = excinfo.value
    if mode == "train":
        assert isinstance(exc, torchslim.StepError) and "finetune/sgd" in str(exc), f"step not named: {exc}"
        assert isinstance(exc.__cause__, torchslim.DataError), f"not a DataError inside: {exc.__cause__!r}"
    else:
        assert isinstance(exc, torchslim.DataError), f"expected a DataError, got {type(exc).__name__}: {exc}"
    return str(exc)


# bad fault -> (make the batches from good x, y; what the message must say)
LABEL_FAULTS = {
    "label-too-high": (lambda x, y: _batches(x, y + 4), ["label 7", "0..3"]),
    "label-negative": (lambda x, y: _batches(x, y - 5), ["label -5", "0..3"]),
    "label-float": (lambda x, y: _batches(x, y.float()), ["float32", "int64"]),
    "label-shape": (lambda x, y: _batches(x, y[:, None].repeat(1, 3)), ["(8, 3)", "(8,)"]),
    "label-count": (lambda x, y: [(x[:8], y[:5])], ["8 output row(s)", "5 target(s)"]),
}

#: Faults in the inputs: the model itself raises on them, so the message must name the inputs it expects.
INPUT_FAULTS = {
    "input-width": (lambda x, y: _batches(torch.randn(len(x), 5), y), ["batch 1", "(2, 12)"]),
    "input-float64": (lambda x, y: _batches(x.double(), y), ["batch 1", "float32"]),
    "input-int64": (lambda x, y: _batches(x.long(), y), ["batch 1", "float32"]),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("fault", list(LABEL_FAULTS))
def test_bad_labels_fail_at_the_first_batch_naming_what_was_expected(engine, case, mode, fault):
    make, expected = LABEL_FAULTS[fault]
    loader = CountingLoader(make(case.inputs, case.targets))
    with pytest.raises(torchslim.TorchslimError) as excinfo:
        _run(engine, case, mode, loader)
    message = _data_error(excinfo, mode)
    assert "batch 1" in message
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    assert loader.drawn == 1, f"{loader.drawn} batches were read before the fault was reported"


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("fault", list(INPUT_FAULTS))
def test_bad_inputs_fail_at_the_first_batch_naming_what_was_expected(engine, case, mode, fault):
    make, expected = INPUT_FAULTS[fault]
    loader = CountingLoader(make(case.inputs, case.targets))
    with pytest.raises(torchslim.TorchslimError) as excinfo:
        _run(engine, case, mode, loader)
    message = _data_error(excinfo, mode)
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    assert loader.drawn == 1


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_later_bad_batch_is_named(engine, case, mode):
    batches = _batches(case.inputs, case.targets)
    x, y = batches[2]
    batches[2] = (x, y + 10)
    loader = CountingLoader(batches)
    with pytest.raises(torchslim.TorchslimError) as excinfo:
        _run(engine, case, mode, loader)
    message = _data_error(excinfo, mode)
    assert "batch 3" in message and "out of range" in message
    assert loader.drawn == 3


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("empty", ["dataloader", "list"])
def test_empty_loaders_are_rejected(engine, case, mode, empty):
    loader = (DataLoader(TensorDataset(case.inputs[:0], case.targets[:0]), batch_size=8)
              if empty == "dataloader" else [])
    with pytest.raises(torchslim.TorchslimError) as excinfo:
        _run(engine, case, mode, loader)
    message = _data_error(excinfo, mode)
    assert "no batches" in message and ("eval_data" if mode == "eval" else "train_data") in message


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batches_without_targets_are_rejected(engine, case, mode):
    loader = CountingLoader([case.inputs[:8], case.inputs[8:16]])  # lone tensors: no labels
    with pytest.raises(torchslim.TorchslimError) as excinfo:
        _run(engine, case, mode, loader)
    message = _data_error(excinfo, mode)
    assert "no target" in message and "(inputs, target)" in message
    assert loader.drawn == 1


def test_sequence_labels_are_checked_per_position(engine):
    """A tagger's (N, T) labels: one bad position in the first batch is reported with the class range."""
    case = ZOO["rnn_tagger"]()
    targets = case.targets.clone()
    targets[0, 3] = 9
    loader = CountingLoader(_batches(case.inputs, targets))
    with pytest.raises(torchslim.DataError, match=r"label 9 is out of range.*0\.\.3"):
        engine.run(case.model, RECIPE_EVAL, eval_data=loader, example_inputs=case.example_inputs)
    assert loader.drawn == 1


def test_good_data_of_every_accepted_form_runs(engine, case):
    """Plain lists of (x, y) pairs and dict batches with 'labels' are accepted, not only DataLoaders."""
    pairs = _batches(case.inputs, case.targets)
    dicts = [{"x": x, "labels": y} for x, y in pairs]

    class DictInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    result = engine.run(case.model, RECIPE_TRAIN, train_data=pairs, eval_data=pairs, example_inputs=case.example_inputs)
    assert 0.0 <= result.final["accuracy"] <= 1.0
    result = engine.run(DictInput(case.model), RECIPE_TRAIN, train_data=dicts, eval_data=dicts)
    assert 0.0 <= result.final["accuracy"] <= 1.0
