"""The ``channel`` accelerate method: real channel removal through Torch-Pruning, on small models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim.demo import digits_loaders
from torchslim.masks import apply_mask
from torchslim.measure import count_macs
from torchslim.testing import check_method_plugin, tiny_task
from torchslim.zoo import DigitsCNN, resnet18
from helpers import SUBPROCESS_TIMEOUT

pytest.importorskip("torch_pruning")

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ models
class ConcatDW(nn.Module):
    """Concatenated branches, a depthwise conv with BatchNorm, a grouped conv with GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(40, 40, 3, padding=1, groups=40)
        self.bn = nn.BatchNorm2d(40)
        self.pw = nn.Conv2d(40, 32, 1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = self.pw(torch.relu(self.bn(self.dw(x))))
        x = torch.relu(self.gn(self.g(x)))
        return self.fc(x.mean((2, 3)))


class Encoder(nn.Module):
    """A linear embedding, one transformer encoder layer (nn.MultiheadAttention inside) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(16, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))


class HardView(nn.Module):
    """Flattens with a hard-coded size: pruning ``c2`` breaks it where Torch-Pruning cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c(x)))).view(-1, 1024))


class RNNHead(nn.Module):
    """An LSTM whose hidden units Torch-Pruning 1.6 cannot remove (it fails inside its LSTM pruner)."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.l(x)[0][:, -1])


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def engine() -> torchslim.Engine:
    return torchslim.Engine()


@pytest.fixture(scope="module")
def digits():
    """Digits loaders and a DigitsCNN trained on them once (test accuracy ~0.97)."""
    train, test = digits_loaders(batch_size=64, seed=0)
    torch.manual_seed(0)
    result = torchslim.Engine().run(
        DigitsCNN(), {"steps": [{"finetune": {"method": "sgd", "epochs": 3, "lr": 0.05}}], "evaluate": ["accuracy"]},
        train_data=train, eval_data=test, seed=0)
    assert result.final["accuracy"] > 0.93
    return train, test, result.model.eval(), result.final["accuracy"]


def channel(**options) -> dict:
    return {"accelerate": {"method": "channel", **options}}


def run(engine, model, *steps, evaluate=(), **kwargs) -> torchslim.RunResult:
    return engine.run(model, {"steps": list(steps), "evaluate": list(evaluate)}, **kwargs)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def step_failure(excinfo) -> BaseException:
    """The plugin's own exception behind the engine's StepError."""
    assert isinstance(excinfo.value, torchslim.StepError)
    return excinfo.value.__cause__


def rows_by_layer(result: torchslim.RunResult) -> dict[str, dict]:
    return {row["layer"]: row for row in result.steps[0].report}


def is_column_subset(small: torch.Tensor, big: torch.Tensor) -> bool:
    """True when every column of ``small`` equals a distinct column of ``big``, in order."""
    j = 0
    for col in small.T:
        while j < big.shape[1] and not torch.equal(big[:, j], col):
            j += 1
        if j == big.shape[1]:
            return False
        j += 1
    return True


# ------------------------------------------------------------------------------------------ contract
def test_channel_honours_the_plugin_contract(torchslim_engine):
    task = tiny_task(train_steps=20)
    check_method_plugin(
        torchslim_engine, "channel", task.model, task.example_inputs, stage="accelerate",
        good_options={"ratio": 0.5}, bad_options={"ratio": 1.0, "importance": "l3", "round_to": 0},
        failing={"model": HardView(), "options": {"ratio": 0.5, "protect_first": False},
                 "example_inputs": (torch.randn(2, 3, 8, 8),), "train_data": None, "eval_data": None},
        train_data=task.train_data, eval_data=task.eval_data,
    )


def test_options_are_checked_before_anything_runs(engine):
    model = DigitsCNN(width=4)
    cases = [
        ({"ratio": 0.5, "mac_ratio": 0.5}, "not both"),
        ({"ratio": 0.95}, "max_layer_ratio"),
        ({"overrides": {"conv2": 1.5}}, "overrides"),
        ({"iterative_steps": 1, "finetune_between": {"method": "sgd"}}, "iterative_steps"),
        ({"finetune_between": {"epochs": 1}, "iterative_steps": 2}, "name a method"),
    ]
    for options, needle in cases:
        with pytest.raises(torchslim.RecipeError, match=needle):
            run(engine, model, channel(**options), example_inputs=(torch.randn(1, 1, 8, 8),))


# ------------------------------------------------------------------------------------------ ResNet
def test_resnet18_loses_channels_for_real(engine):
    torch.manual_seed(0)
    model = resnet18(classes=10, width=16).eval()
    before = state(model)
    x = torch.randn(2, 3, 32, 32)
    result = run(engine, model, channel(ratio=0.5), evaluate=["macs", "params"], example_inputs=(x,))
    pruned = result.model.eval()
    assert state(model).keys() == before.keys() and all(torch.equal(state(model)[k], before[k]) for k in before)

    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())
    ratio = result.final["macs"] / result.baseline["macs"]
    # internal channels halve (MACs x 1/4 where both sides shrink); the protected stem and its residual
    # stream keep theirs, so the whole model lands between (1 - ratio)^2 and (1 - ratio)
    assert 0.25 <= ratio <= 0.5, ratio
    assert result.final["params"] < 0.4 * result.baseline["params"]
    assert result.steps[0].info["macs_after"] == count_macs(pruned, (x,)) == result.final["macs"]

    rows = rows_by_layer(result)
    assert set(rows["layer1.0.conv1"]) >= {"layer", "channels_before", "channels_after", "macs_share"}
    assert (rows["layer1.0.conv1"]["channels_before"], rows["layer1.0.conv1"]["channels_after"]) == (16, 8)
    assert pruned.layer1[0].conv1.out_channels == pruned.layer1[0].bn1.num_features == pruned.layer1[0].conv2.in_channels == 8
    for row in rows.values():  # a conv's MACs scale with its in x out channels
        expected = row["macs_before"] * row["channels_after"] * row["in_channels_after"]
        assert row["macs_after"] * row["channels_before"] * row["in_channels_before"] == expected, row
    assert abs(sum(r["macs_share"] for r in rows.values()) - 1.0) < 0.02

    # protected: the stem keeps every weight; the classifier keeps its 10 outputs and a subset of its inputs
    assert torch.equal(pruned.conv1.weight, model.conv1.weight)
    assert pruned.fc.out_features == 10 and pruned.fc.in_features < model.fc.in_features
    assert is_column_subset(pruned.fc.weight, model.fc.weight)
    reasons = dict(result.steps[0].skipped)
    assert "first layer" in reasons["conv1"] and "output" in reasons["fc"]
    # a plain model: standard torch layers, no wrappers, no parametrizations
    for module in pruned.modules():
        assert type(module).__module__.startswith(("torch.nn", "torchslim.zoo")), type(module)


def test_round_to_keeps_channel_counts_multiples(engine):
    torch.manual_seed(0)
    model = resnet18(classes=10, width=16)
    recipe = """
steps:
  - accelerate: {method: channel, ratio: 0.3, round_to: 8}
evaluate: []
"""
    result = engine.run(model, recipe, example_inputs=(torch.randn(1, 3, 32, 32),))
    changed = [r for r in result.steps[0].report if r["channels_after"] != r["channels_before"]]
    assert changed
    for row in changed:
        assert row["channels_after"] % 8 == 0 and row["channels_after"] >= 8, row
    # 16 channels at ratio 0.3 keep 11 without rounding; rounded down to 8
    assert result.model.layer1[0].conv1.out_channels == 8


# ------------------------------------------------------------------------------------------ coupling
def test_concat_depthwise_and_grouped_convs_stay_consistent(engine):
    torch.manual_seed(0)
    model = ConcatDW().eval()
    x = torch.randn(2, 3, 8, 8)
    result = run(engine, model, channel(ratio=0.5, protect_first=False), example_inputs=(x,))
    m = result.model.eval()
    with torch.no_grad():
        out = m(x)
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())
    assert m.a.out_channels < 16 and m.b.out_channels < 24
    assert m.dw.in_channels == m.dw.out_channels == m.dw.groups == m.bn.num_features == m.a.out_channels + m.b.out_channels
    assert m.pw.in_channels == m.dw.out_channels
    assert m.g.out_channels < 32 and m.g.out_channels % 4 == 0 and m.g.groups == 4
    assert m.gn.num_channels == m.g.out_channels and m.gn.num_groups == 4 and m.fc.in_features == m.g.out_channels
    assert count_macs(m, (x,)) < 0.5 * count_macs(model, (x,))


def test_attention_embed_dim_shrinks_evenly_across_heads(engine):
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(2, 7, 16)
    result = run(engine, model, channel(ratio=0.5, protect_first=False), example_inputs=(x,))
    m = result.model.eval()
    attn = m.enc.self_attn
    assert attn.embed_dim == 16 and attn.num_heads == 4 and attn.head_dim * attn.num_heads == attn.embed_dim
    assert attn.in_proj_weight.shape == (3 * 16, 16) and attn.out_proj.weight.shape == (16, 16)
    assert m.emb.out_features == m.enc.norm1.normalized_shape[0] == m.enc.linear1.in_features == m.head.in_features == 16
    assert m.enc.linear1.out_features == 32 and m.head.out_features == 5
    with torch.no_grad():
        out = m(x)
    assert out.shape == (2, 5) and bool(torch.isfinite(out).all())
    assert count_macs(m, (x,)) < 0.4 * count_macs(model, (x,))
    # by default the first layer is protected, and here it feeds the whole residual stream
    kept = run(engine, model, channel(ratio=0.5), example_inputs=(x,)).model
    assert kept.enc.self_attn.embed_dim == 32 and kept.enc.linear1.out_features == 32


# ------------------------------------------------------------------------------------------ digits
def test_digits_keeps_accuracy_after_finetuning(engine, digits):
    train, test, dense, dense_acc = digits
    result = run(engine, dense, channel(ratio=0.5),
                 {"finetune": {"method": "sgd", "epochs": 2, "lr": 0.01}},
                 evaluate=["accuracy", "macs"], train_data=train, eval_data=test)
    pruned = result.model
    assert result.final["macs"] <= 0.5 * result.baseline["macs"]
    assert result.final["accuracy"] >= 0.9 and result.final["accuracy"] >= dense_acc - 0.06
    assert pruned.conv1.out_channels == 32  # the protected stem keeps its channels
    assert (pruned.conv2.out_channels, pruned.conv3.out_channels, pruned.fc1.out_features) == (32, 32, 64)
    assert pruned.fc1.in_features == 32 * 4 * 4 and pruned.fc2.out_features == 10


def test_importance_criteria_rank_differently(engine, digits):
    train, test, dense, _ = digits
    kept = {}
    for importance in ("l1", "l2", "bn_scale", "taylor"):
        result = run(engine, dense, channel(ratio=0.5, importance=importance), train_data=train,
                     example_inputs=(next(iter(test))[0][:2],))
        model = result.model
        assert model.conv2.out_channels == 32
        assert all(p.grad is None for p in model.parameters())  # taylor's gradients are not left behind
        # which of the original conv2 filters survived
        kept[importance] = tuple(
            int(torch.nonzero((dense.conv2.weight == w).flatten(1).all(1))[0]) for w in model.conv2.weight)
        if importance == "bn_scale":  # no BatchNorm after fc1: bn_scale cannot rank it, so it is kept
            assert model.fc1.out_features == 128
            assert "bn_scale" in dict(result.steps[0].skipped)["fc1"]
    assert len(set(kept.values())) >= 3, kept


def test_taylor_needs_targets(engine, digits):
    _, test, dense, _ = digits
    inputs_only = DataLoader(TensorDataset(next(iter(test))[0]), batch_size=16)
    with pytest.raises(torchslim.StepError) as excinfo:
        run(engine, dense, channel(importance="taylor"), train_data=inputs_only)
    error = step_failure(excinfo)
    assert isinstance(error, torchslim.DataError) and "targets" in str(error)


def test_global_scope_and_overrides(engine, digits):
    train, test, dense, _ = digits
    x = (next(iter(test))[0][:2],)
    globally = run(engine, dense, channel(ratio=0.6, scope="global", max_layer_ratio=0.8), example_inputs=x).model
    fractions = {name: getattr(globally, name).weight.shape[0] / getattr(dense, name).weight.shape[0]
                 for name in ("conv2", "conv3", "fc1")}
    assert len(set(fractions.values())) > 1, fractions  # layers lose different fractions
    assert min(fractions.values()) >= 0.18  # no layer beyond max_layer_ratio (kept counts round down)

    result = run(engine, dense, channel(ratio=0.3, overrides={"conv2": 0.75, "fc*": 0.0}), example_inputs=x)
    m = result.model
    assert (m.conv2.out_channels, m.conv3.out_channels, m.fc1.out_features) == (16, 44, 128)

    with pytest.raises(torchslim.StepError) as excinfo:
        run(engine, dense, channel(overrides={"layer9.*": 0.5}), example_inputs=x)
    error = step_failure(excinfo)
    assert isinstance(error, torchslim.ModelError) and "layer9.*" in str(error) and "conv2" in str(error)


def test_mac_ratio_finds_the_channel_ratio(engine, digits):
    train, test, dense, _ = digits
    x = (next(iter(test))[0][:2],)
    result = run(engine, dense, channel(mac_ratio=0.5), evaluate=["macs"], example_inputs=x)
    info = result.steps[0].info
    assert 0.42 <= info["mac_ratio"] <= 0.5 and 0.0 < info["ratio"] < 0.5
    assert result.final["macs"] / result.baseline["macs"] == pytest.approx(info["mac_ratio"], abs=1e-3)
    with pytest.raises(torchslim.StepError) as excinfo:  # the protected stem alone costs more than 1%
        run(engine, dense, channel(mac_ratio=0.01), example_inputs=x)
    assert isinstance(step_failure(excinfo), torchslim.ModelError)


def test_iterative_steps_with_finetuning_between(engine, digits):
    train, test, dense, _ = digits
    between = {"method": "sgd", "epochs": 1, "max_batches_per_epoch": 3}
    result = run(engine, dense, channel(ratio=0.5, iterative_steps=2, finetune_between=between),
                 train_data=train, example_inputs=(next(iter(test))[0][:2],))
    m = result.model
    assert (m.conv2.out_channels, m.conv3.out_channels, m.fc1.out_features) == (32, 32, 64)
    assert not torch.equal(m.conv1.weight, dense.conv1.weight)  # fine-tuned between the two steps


# ------------------------------------------------------------------------------------------ failures
def test_untraceable_model_names_the_layer_and_the_workaround(engine):
    torch.manual_seed(0)
    model = HardView()
    before = state(model)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(torchslim.StepError) as excinfo:
        run(engine, model, channel(ratio=0.5, protect_first=False), example_inputs=(x,))
    error = step_failure(excinfo)
    message = str(error)
    assert isinstance(error, torchslim.ModelError)
    assert "'c2'" in message and "'fc'" in message and "ignore" in message and "view(-1, 1024)" in message
    assert "Traceback" not in message
    assert all(torch.equal(state(model)[k], v) for k, v in before.items())

    # the workaround the message gives works
    result = run(engine, model, channel(ratio=0.5, protect_first=False, ignore=["c2"]), example_inputs=(x,))
    assert result.model.c2.out_channels == 16 and result.model.c.out_channels == 8


def test_hook_leaves_the_model_it_was_given_alone_on_failure():
    from torchslim.plugins.channel import ChannelPruning

    model = HardView()
    before = state(model)
    step = torchslim.Step.model_validate(channel(ratio=0.5, protect_first=False))
    step.options = ChannelPruning.Options.model_validate(step.options)
    context = torchslim.RunContext(example_inputs=(torch.randn(2, 3, 8, 8),))
    with pytest.raises(torchslim.ModelError):
        ChannelPruning().accelerate(model=model, step=step, context=context)
    assert all(torch.equal(state(model)[k], v) for k, v in before.items())


def test_failure_inside_torch_pruning_names_the_module(engine):
    torch.manual_seed(0)
    model = RNNHead()
    x = torch.randn(2, 5, 8)
    recipe = channel(ratio=0.5, protect_first=False, targets={"types": ["LSTM", "Linear"]})
    try:
        result = run(engine, model, recipe, example_inputs=(x,))
    except torchslim.StepError as exc:
        error = exc.__cause__
        assert isinstance(error, torchslim.ModelError)
        assert "module 'l' (LSTM" in str(error) and "ignore" in str(error)
    else:  # a Torch-Pruning that handles this LSTM must give a consistent, working model
        m = result.model.eval()
        assert m.l.hidden_size == m.fc.in_features < 16
        assert m(x).shape == (2, 10)
    # by default only convs and linears are roots, so the LSTM keeps its units and the run succeeds
    assert run(engine, model, channel(ratio=0.5), example_inputs=(x,)).model.l.hidden_size == 16


def test_masked_model_is_refused_with_the_fix(engine):
    model = DigitsCNN(width=4)
    apply_mask(model.conv2, "weight", torch.ones_like(model.conv2.weight))
    with pytest.raises(torchslim.StepError) as excinfo:
        run(engine, model, channel(), example_inputs=(torch.randn(1, 1, 8, 8),))
    error = step_failure(excinfo)
    assert isinstance(error, torchslim.ModelError) and "conv2" in str(error) and "before" in str(error)


def test_without_torch_pruning_the_plugin_loads_and_says_what_to_install():
    code = (
        "import sys; sys.modules['torch_pruning'] = None\n"
        "import torchslim\n"
        "engine = torchslim.Engine()\n"
        "assert 'channel' in engine.methods('accelerate')\n"
        "try:\n"
        "    engine.recipe({'steps': [{'accelerate': {'method': 'channel', 'ratio': 0.5}}]})\n"
        "except torchslim.RecipeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "step 1 (accelerate/channel)" in done.stdout and "pip install 'torchslim[prune]'" in done.stdout


# ------------------------------------------------------------------------------------------ save/load
@pytest.mark.parametrize("build, shape", [
    (lambda: resnet18(classes=10, width=16), (2, 3, 32, 32)),
    (lambda: DigitsCNN(width=8), (2, 1, 8, 8)),
    (ConcatDW, (2, 3, 8, 8)),
], ids=["resnet18", "digits", "concat-dw"])
def test_saved_pruned_model_loads_on_a_fresh_base_model(engine, tmp_path, build, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    result = run(engine, build(), channel(ratio=0.5), example_inputs=(x,))
    torchslim.save(result, tmp_path)
    torch.manual_seed(1)  # a fresh base model with other weights: everything must come from the files
    loaded = torchslim.load(tmp_path, base_model=build()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_saved_pruned_attention_loads_on_a_fresh_base_model(engine, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16)
    result = run(engine, Encoder(), channel(ratio=0.5, protect_first=False), example_inputs=(x,))
    attention = result.model.enc.self_attn
    assert attention.embed_dim < 32  # the attention itself was pruned, not only the layers around it
    torchslim.save(result, tmp_path)
    loaded = torchslim.load(tmp_path, base_model=Encoder()).eval()
    rebuilt = loaded.enc.self_attn
    assert (rebuilt.embed_dim, rebuilt.num_heads, rebuilt.head_dim) == (
        attention.embed_dim, attention.num_heads, attention.head_dim)
    assert rebuilt.in_proj_weight.shape == attention.in_proj_weight.shape
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


# ------------------------------------------------------------------------------------------ bench
def test_bench_quick_runs(tmp_path):
    out = tmp_path / "channel.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "channel.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["speed"]["same_architecture_as_torch_pruning"] is True
    methods = {row["method"] for row in data["speed"]["rows"]}
    assert {"channel", "torch-pruning"} <= methods
    digits = {row["method"]: row for row in data["digits"]["rows"]}
    assert digits["channel"]["MACs / dense"] <= 0.5
    assert "## speed" in done.stdout and "## digits" in done.stdout
