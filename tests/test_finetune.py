"""The ``sgd`` fine-tuning method, run through Engine.run on the real digits data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import torchslim
from torchslim.demo import digits_loaders
from torchslim.measure import count_nonzeros, count_params
from torchslim.plugins.finetune import SGDFinetune, lr_factor
from torchslim.training import TrainingOptions, fit, task_loss
from torchslim.testing import register_inline_plugin
from torchslim.zoo import MLP, DigitsCNN

FAST_EVAL = {"latency_runs": 3, "latency_warmup": 1}




def finetune_recipe(evaluate=("accuracy",), **options) -> dict:
    return {"steps": [{"finetune": {"method": "sgd", **options}}], "evaluate": list(evaluate),
            "evaluation": FAST_EVAL}


def train_briefly(model: nn.Module, loader, steps: int) -> nn.Module:
    """A few plain SGD steps, so the model is better than chance but far from done."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


class DigitsGRU(nn.Module):
    """Reads an 8x8 digit as 8 rows of 8 pixels with a GRU and classifies the last state."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 8, 8))
        return self.head(out[:, -1])


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- end to end
def test_finetune_raises_accuracy_end_to_end(engine):
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = train_briefly(DigitsCNN(width=16), train, steps=4)
    before = weights(model)
    result = engine.run(
        model, {"steps": [{"finetune": {"method": "sgd", "epochs": 1, "lr": 0.05}}],
                "evaluate": ["accuracy", "params", "macs", "latency"], "evaluation": FAST_EVAL},
        train_data=train, eval_data=test,
    )
    base, final = result.baseline, result.final
    assert final["accuracy"] >= base["accuracy"] + 0.1, (base, final)
    assert final["accuracy"] > 0.85
    assert final["params"] == base["params"] == count_params(model)
    assert final["macs"] == base["macs"] > 0
    assert 0 < final["latency_ms"] < 1000
    info = result.steps[0].info
    assert info["epochs"] == 1 and info["steps"] == len(train) and math.isfinite(info["final_loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched


def test_two_runs_are_bit_identical_and_seed_matters(engine):
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = DigitsCNN(width=8)
    recipe = finetune_recipe(steps=12, lr=0.05)
    first = engine.run(model, recipe, train_data=train, eval_data=test)
    second = engine.run(model, recipe, train_data=train, eval_data=test)
    a, b = weights(first.model), weights(second.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.steps[0].info == second.steps[0].info
    other = weights(engine.run(model, recipe, train_data=train, eval_data=test, seed=1).model)
    assert not torch.equal(a["fc2.weight"], other["fc2.weight"])


def test_direct_calls_are_deterministic_and_keep_the_loader_state():
    # Called outside the engine (e.g. nested from another plugin), the method seeds the loader's
    # shuffle itself and gives the user's generator back as it found it.
    torch.manual_seed(0)
    train, _ = digits_loaders()
    state = train.generator.get_state()
    step = torchslim.Step.model_validate({"finetune": {"method": "sgd"}})
    step.options = SGDFinetune.Options(steps=8, lr=0.05)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN(width=4)
        torch.manual_seed(123)  # global RNG state differs from the seed the method uses
        runs.append(weights(SGDFinetune().finetune(model=model, step=step, context=torchslim.RunContext(
            train_data=train, seed=3)).model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert torch.equal(train.generator.get_state(), state)


def test_pruning_masks_survive_finetuning(engine):
    masks = pytest.importorskip("torchslim.masks")
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = DigitsCNN(width=8)
    keep_fc1 = torch.rand(model.fc1.weight.shape) > 0.7
    keep_conv2 = torch.rand(model.conv2.weight.shape) > 0.5
    masks.apply_mask(model.fc1, "weight", keep_fc1)
    masks.apply_mask(model.conv2, "weight", keep_conv2)
    with torch.no_grad():
        fc1_before = model.fc1.weight.clone()
    result = engine.run(model, finetune_recipe(evaluate=("accuracy", "nonzeros"), steps=15, lr=0.05),
                        train_data=train, eval_data=test)
    tuned = result.model
    assert torch.equal(masks.get_mask(tuned.fc1, "weight"), keep_fc1)
    assert torch.equal(masks.get_mask(tuned.conv2, "weight"), keep_conv2)
    with torch.no_grad():
        assert bool((tuned.fc1.weight[~keep_fc1] == 0).all())
        assert bool((tuned.conv2.weight[~keep_conv2] == 0).all())
        assert not torch.equal(tuned.fc1.weight[keep_fc1], fc1_before[keep_fc1])  # it did train
    assert result.final["nonzeros"] <= result.baseline["nonzeros"] + 200  # only BN biases (init 0) may grow
    assert count_nonzeros(tuned) == result.final["nonzeros"]


def test_own_parametrization_survives_direct_call():
    # A mask registered with plain torch parametrize (no torchslim.masks) holds too.
    class Zero(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    torch.manual_seed(0)
    train, _ = digits_loaders()
    model = MLP()
    keep = torch.rand(model.net[0].weight.shape) > 0.5
    torch.nn.utils.parametrize.register_parametrization(model.net[0], "weight", Zero(keep))
    step = torchslim.Step.model_validate({"finetune": {"method": "sgd"}})
    step.options = SGDFinetune.Options(steps=10, lr=0.1)
    out = SGDFinetune().finetune(model=model, step=step, context=torchslim.RunContext(train_data=train))
    with torch.no_grad():
        assert bool((out.model.net[0].weight[~keep] == 0).all())
        assert int(torch.count_nonzero(out.model.net[0].weight)) == int(keep.sum())
    assert out.info["steps"] == 10


def test_gru_on_digit_rows_learns_with_adamw(engine):
    torch.manual_seed(0)
    train, test = digits_loaders()
    result = engine.run(DigitsGRU(), finetune_recipe(epochs=2, optimizer="adamw", lr=0.01),
                        train_data=train, eval_data=test)
    assert result.final["accuracy"] > result.baseline["accuracy"] + 0.3


def test_a_trainer_built_on_fit_replaces_only_the_loss(engine):
    # torchslim.training.fit is the loop a method supplies its loss to (torchslim-distill does): the
    # loop, seeding and checks stay the same, so passing the default loss trains bit-identically to sgd.
    calls: list[str] = []

    class Recorded:
        Options = TrainingOptions

        @torchslim.hookimpl
        def finetune(self, model, step, context):
            def loss(net, inputs, target, where):
                calls.append(where)
                return task_loss(context.forward(net, inputs, where), target, context, where)
            return torchslim.StepResult(model=model, info=fit(model, context, step.options, "mine", loss=loss))

    class Batchwise:
        Options = TrainingOptions

        @torchslim.hookimpl
        def finetune(self, model, step, context):
            def loss(net, inputs, target, where):
                return nn.functional.cross_entropy(context.forward(net, inputs, where), target, reduction="none")
            return torchslim.StepResult(model=model, info=fit(model, context, step.options, "mine", loss=loss))

    torch.manual_seed(0)
    train, _ = digits_loaders()
    model = DigitsCNN(width=4)
    plain = weights(engine.run(model, finetune_recipe(evaluate=(), steps=5), train_data=train).model)
    with register_inline_plugin(engine, Recorded, "recorded"):
        recipe = {"steps": [{"finetune": {"method": "recorded", "steps": 5}}], "evaluate": []}
        mine = weights(engine.run(model, recipe, train_data=train).model)
    assert all(torch.equal(plain[k], mine[k]) for k in plain)
    assert calls == [f"train_data batch {i} of epoch 1" for i in range(1, 6)]
    with register_inline_plugin(engine, Batchwise, "batchwise"):
        recipe = {"steps": [{"finetune": {"method": "batchwise", "steps": 2}}], "evaluate": []}
        with pytest.raises(torchslim.StepError, match=r"batch 1 of epoch 1: the loss must be a scalar tensor, got \(64,\)"):
            engine.run(model, recipe, train_data=train)


def test_train_longer_doubles_epochs_or_steps():
    sgd = SGDFinetune()
    assert sgd.train_longer(TrainingOptions(epochs=3), 2.0).epochs == 6
    assert sgd.train_longer(TrainingOptions(steps=10, lr=0.1), 2.0).steps == 20
    assert sgd.train_longer(TrainingOptions(), 2.0).epochs == 2  # the default is one epoch
    assert sgd.train_longer(TrainingOptions(steps=10, lr=0.1), 2.0).lr == 0.1


# ----------------------------------------------------------------------------- options
def test_steps_and_epochs_counts(engine):
    torch.manual_seed(0)
    train, _ = digits_loaders()
    model = MLP()
    by_steps = engine.run(model, finetune_recipe(evaluate=(), steps=30), train_data=train)
    assert by_steps.steps[0].info["steps"] == 30
    assert by_steps.steps[0].info["epochs"] == pytest.approx(30 / len(train))
    capped = engine.run(model, finetune_recipe(evaluate=(), epochs=2, max_batches_per_epoch=3), train_data=train)
    assert capped.steps[0].info["steps"] == 6 and capped.steps[0].info["epochs"] == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 2, "steps": 10}, r"give either epochs \(2\) or steps \(10\), not both"),
        ({"lr": 0}, r"step 1 \(finetune/sgd\): lr=0: .*greater than 0"),
        ({"optimizer": "adam"}, r"optimizer='adam'"),
        ({"schedule": "linear"}, r"schedule='linear'"),
        ({"momentum": 1.5}, r"momentum=1.5"),
        ({"epochs": 0}, r"epochs=0"),
        ({"grad_clip": -1}, r"grad_clip=-1"),
        ({"learning_rate": 0.1}, r"unknown option\(s\) learning_rate"),
    ],
)
def test_bad_options_are_rejected_before_running(engine, options, message):
    with pytest.raises(torchslim.RecipeError, match=message):
        engine.recipe(finetune_recipe(**options))


def test_lr_schedule():
    assert [lr_factor(i, 10, 4, "cosine") for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0
    assert lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(lr_factor(i, 10, 2, "constant") == 1.0 for i in range(2, 10))


def test_grad_clip_bounds_every_update(engine):
    torch.manual_seed(0)
    train, _ = digits_loaders()
    model = MLP()
    start = torch.cat([p.detach().flatten() for p in model.parameters()])

    def moved(**options) -> float:
        out = engine.run(model, finetune_recipe(evaluate=(), steps=5, lr=0.1, momentum=0.0, schedule="constant",
                                                **options), train_data=train).model
        return float((torch.cat([p.detach().flatten() for p in out.parameters()]) - start).norm())

    # with SGD, each update is lr * clipped gradient, whose norm is at most lr * grad_clip
    assert moved(grad_clip=1e-3) <= 5 * 0.1 * 1e-3 * (1 + 1e-4)
    assert moved() > 10 * 5 * 0.1 * 1e-3


def test_user_loss_fn_is_used_and_label_smoothing_conflicts(engine):
    torch.manual_seed(0)
    train, _ = digits_loaders()
    calls = []

    def loss_fn(output, target):
        calls.append(output.shape)
        return nn.functional.nll_loss(nn.functional.log_softmax(output, 1), target)

    engine.run(MLP(), finetune_recipe(evaluate=(), steps=3), train_data=train, loss_fn=loss_fn)
    assert len(calls) == 3
    with pytest.raises(torchslim.StepError, match="label_smoothing=0.1 applies to the default cross-entropy") as info:
        engine.run(MLP(), finetune_recipe(evaluate=(), steps=3, label_smoothing=0.1), train_data=train,
                   loss_fn=loss_fn)
    assert isinstance(info.value.__cause__, torchslim.RecipeError)


def test_bad_training_batch_fails_at_first_batch_with_data_error(engine):
    x = torch.zeros(8, 1, 8, 8)
    bad = [(x, torch.full((8,), 12))]
    with pytest.raises(torchslim.StepError, match=r"train_data batch 1 of epoch 1: label 12 is out of range.*0\.\.9") as info:
        engine.run(DigitsCNN(width=4), finetune_recipe(evaluate=(), steps=2), train_data=bad)
    assert isinstance(info.value.__cause__, torchslim.DataError)
    with pytest.raises(torchslim.DataError, match=r"step 1 \(finetune/sgd\) needs train_data"):  # before any work
        engine.run(DigitsCNN(width=4), finetune_recipe(evaluate=(), steps=2))
    with pytest.raises(torchslim.StepError, match="train_data yielded no batches"):
        engine.run(DigitsCNN(width=4), finetune_recipe(evaluate=(), steps=2), train_data=[])


def test_progress_bar_only_when_asked_or_on_a_terminal(engine, capfd):
    torch.manual_seed(0)
    train, _ = digits_loaders()
    engine.run(MLP(), finetune_recipe(evaluate=(), steps=3), train_data=train)
    assert "finetune/sgd" not in capfd.readouterr().err  # stderr is not a TTY under pytest
    engine.run(MLP(), finetune_recipe(evaluate=(), steps=3, progress=True), train_data=train)
    assert "finetune/sgd" in capfd.readouterr().err


def test_docs_describe_every_option():
    text = (Path(__file__).resolve().parents[1] / "docs" / "finetune.md").read_text()
    for name in SGDFinetune.Options.model_fields:
        assert f"`{name}`" in text, f"docs/finetune.md does not describe option {name}"
