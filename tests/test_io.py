"""torchslim.save / torchslim.load: exact round trips, small files, clear errors, atomic writes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim import io, masks, zoo
from torchslim.io import atomic, writer
from torchslim.plugins.svd import modules as lowrank
from torchslim.io.manifest import FORMAT_VERSION, checksum_of
from torchslim.results import RunResult

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ----------------------------------------------------------------------------------------- helpers
def raw_bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(INT_VIEW[t.element_size()])


def assert_state_bit_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(raw_bits(sa[key]), raw_bits(sb[key])), key


def settle_batchnorm(model: nn.Module, *shape: int) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(*shape))
    return model.eval()


def prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Mask the smallest ``sparsity`` fraction of every conv/linear weight (through torchslim.masks)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            k = int(sparsity * w.numel())
            threshold = w.abs().flatten().kthvalue(k).values
            masks.apply_mask(module, "weight", w.abs() > threshold)
    return model


def digits(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return settle_batchnorm(zoo.DigitsCNN(), 16, 1, 8, 8)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def untouched(model: nn.Module):
    """A snapshot check: call the returned function to assert ``model`` did not change."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = repr(model)

    def check() -> None:
        assert repr(model) == structure
        assert not any(parametrize.is_parametrized(m) for m in model.modules())
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(raw_bits(after[k]), raw_bits(before[k])) for k in before)

    return check


X = torch.randn(8, 1, 8, 8)


# ----------------------------------------------------------------------------------------- round trips
def test_masked_digits_cnn_round_trips_exactly_keeps_masks_and_is_small(tmp_path):
    model = prune(digits(), 0.9)
    out = torchslim.save(model, tmp_path / "model")
    assert out == tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors"]

    loaded = torchslim.load(out, zoo.DigitsCNN()).eval()
    assert torch.equal(loaded(X), model(X))
    assert_state_bit_identical(model, loaded)
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        assert torch.equal(masks.get_mask(getattr(loaded, name), "weight"), masks.get_mask(getattr(model, name), "weight"))
        assert torch.equal(raw_bits(getattr(loaded, name).weight), raw_bits(getattr(model, name).weight))

    # the masks hold through further training of the loaded model
    pruned = ~masks.get_mask(loaded.fc1, "weight")
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    loaded.train()
    for _ in range(3):
        optimizer.zero_grad()
        loaded(X).square().mean().backward()
        optimizer.step()
    assert bool((loaded.fc1.weight[pruned] == 0).all())

    # 90% unstructured sparsity: the whole directory is at most 0.2x the dense weights file
    dense_file = tmp_path / "dense.safetensors"
    save_file(digits().state_dict(), str(dense_file))
    ratio = dir_bytes(out) / dense_file.stat().st_size
    assert ratio <= 0.2, ratio
    assert io.saved_size_bytes(model) == dir_bytes(out)


def test_resnet18_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    model = settle_batchnorm(zoo.resnet18(classes=10), 4, 3, 32, 32)  # full width, small input
    torchslim.save(model, tmp_path / "r18")
    loaded = torchslim.load(tmp_path / "r18", zoo.resnet18(classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert_state_bit_identical(model, loaded)


class Tied(nn.Module):
    """An embedding whose weight is also the output projection (one Parameter, two modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


TOKENS = torch.randint(0, 50, (4, 7))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    torchslim.save(model, tmp_path / "tied")
    stored = load_file(str(tmp_path / "tied" / "model.safetensors"))
    assert len(stored) == len(model.state_dict()) - 1  # the tied weight once
    loaded = torchslim.load(tmp_path / "tied", Tied())
    assert loaded.out.weight is loaded.embed.weight
    assert torch.equal(loaded(TOKENS), model(TOKENS))


def test_masked_tied_weights_share_one_mask_after_loading(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    keep = model.embed.weight.detach().abs() > 0.8
    shared = masks.apply_mask(model.embed, "weight", keep)
    masks.apply_mask(model.out, "weight", shared)
    torchslim.save(model, tmp_path / "tied")
    loaded = torchslim.load(tmp_path / "tied", Tied())
    assert masks.mask_module(loaded.embed, "weight") is masks.mask_module(loaded.out, "weight")
    assert masks.underlying_tensor(loaded.embed, "weight") is masks.underlying_tensor(loaded.out, "weight")
    assert torch.equal(loaded(TOKENS), model(TOKENS))
    assert_state_bit_identical(model, loaded)


class Mixed(nn.Module):
    """Half-precision layers, integer and boolean buffers, a non-float parameter, odd float values."""

    def __init__(self) -> None:
        super().__init__()
        self.lin16 = nn.Linear(6, 6).to(torch.bfloat16)
        self.fp16 = nn.Parameter(torch.zeros(6, dtype=torch.float16))
        self.codes = nn.Parameter(torch.zeros(40, dtype=torch.int8), requires_grad=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("flags", torch.zeros(100, dtype=torch.bool))
        self.register_buffer("odd", torch.zeros(64))
        self.register_buffer("wide", torch.zeros(3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin16(x.to(torch.bfloat16)).float() + self.fp16.float()
        return y * self.codes[:6].float() + self.flags[:6].float() + self.odd[:6] + self.wide.sum().float()


def mixed_values() -> Mixed:
    torch.manual_seed(1)
    model = Mixed()
    with torch.no_grad():
        model.fp16.copy_(torch.randn(6))
        model.codes.copy_(torch.randint(-128, 128, (40,)) * (torch.rand(40) < 0.2))
        model.steps.fill_(12345)
        model.flags.copy_(torch.rand(100) < 0.1)
        model.odd[::3] = -0.0
        model.odd[1] = float("nan")
        model.odd[2] = float("inf")
        model.odd[4] = 1e-42  # a float32 denormal
        model.wide.copy_(torch.tensor([1 / 3, -0.0, 2.0**-1070]))
    return model


def test_buffers_and_non_float_tensors_round_trip_bit_for_bit(tmp_path):
    model = mixed_values()
    torchslim.save(model, tmp_path / "mixed")
    loaded = torchslim.load(tmp_path / "mixed", Mixed())
    assert_state_bit_identical(model, loaded)
    assert loaded.lin16.weight.dtype == torch.bfloat16 and loaded.codes.dtype == torch.int8
    x = torch.randn(3, 6)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0, equal_nan=True)  # exact; NaN where NaN


class Scaled(nn.Module):
    """A custom module kind a plugin registers: a linear layer followed by a fixed scale."""

    def __init__(self, features: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.inner = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale

    def torchslim_spec(self) -> dict:
        return {"features": self.inner.in_features, "scale": self.scale}

    @classmethod
    def from_torchslim_spec(cls, spec: dict) -> "Scaled":
        return cls(**spec)


class ScaledKinds:
    """A plugin that contributes the ``Scaled`` module kind."""

    @torchslim.hookimpl
    def register_module_kinds(self, register):
        register(Scaled)


def scaled_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = zoo.MLP((64, 32, 32, 10))
    model.net[2] = Scaled(32, 0.25)
    return model


def test_plugin_module_kind_is_rebuilt_with_the_given_registry(tmp_path):
    model = scaled_mlp()
    torchslim.save(model, tmp_path / "kind")
    manifest = json.loads((tmp_path / "kind" / "manifest.json").read_text())
    assert manifest["modules"][0]["path"] == "net.2"
    assert manifest["modules"][0]["spec"] == {"features": 32, "scale": 0.25}

    registry = torchslim.PluginRegistry(discover=False)
    registry.register(ScaledKinds(), name="scaled-kinds")
    base = zoo.MLP((64, 32, 32, 10))
    check = untouched(base)
    loaded = torchslim.load(tmp_path / "kind", base, registry=registry)
    check()
    assert isinstance(loaded.net[2], Scaled) and loaded.net[2].scale == 0.25
    x = torch.randn(5, 64)
    assert torch.equal(loaded(x), model(x))


def test_unknown_module_kind_names_the_kind_and_the_plugin_hook(tmp_path):
    torchslim.save(scaled_mlp(), tmp_path / "kind")
    base = zoo.MLP((64, 32, 32, 10))
    check = untouched(base)
    with pytest.raises(torchslim.SaveLoadError) as info:
        torchslim.load(tmp_path / "kind", base, registry=torchslim.PluginRegistry(discover=False))
    message = str(info.value)
    assert f"{Scaled.__module__}.Scaled" in message and "'net.2'" in message
    assert "plugin" in message and "register_module_kinds" in message
    check()


def test_low_rank_and_channel_pruned_layers_are_rebuilt_on_a_fresh_base(tmp_path):
    torch.manual_seed(0)
    model = zoo.DigitsCNN()
    # channel pruning: conv1 keeps 20 of 32 channels, bn1 and conv2's input follow
    model.conv1 = nn.Conv2d(1, 20, 3, padding=1)
    model.bn1 = nn.BatchNorm2d(20)
    model.conv2 = nn.Conv2d(20, 64, 3, padding=1)
    # low-rank factor modules of the svd plugin
    model.conv3 = lowrank.ChannelLowRankConv(64, 64, 3, rank=8, padding=1)
    model.fc1 = lowrank.LowRankLinear(1024, 128, rank=16)
    model = prune(settle_batchnorm(model, 16, 1, 8, 8), 0.5)
    torchslim.save(model, tmp_path / "edited")
    base = zoo.DigitsCNN()
    check = untouched(base)
    loaded = torchslim.load(tmp_path / "edited", base).eval()
    check()
    assert isinstance(loaded.conv3, lowrank.ChannelLowRankConv) and isinstance(loaded.fc1, lowrank.LowRankLinear)
    assert loaded.conv1.out_channels == 20 and loaded.conv2.in_channels == 20 and loaded.bn1.num_features == 20
    assert masks.get_mask(loaded.fc1.first, "weight") is not None
    assert torch.equal(loaded(X), model(X))
    assert_state_bit_identical(model, loaded)


class Positions(nn.Module):
    """Learned positions as plain Parameters (one of them held twice), an attention layer and a head."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 6, dim))
        self.gate = nn.Parameter(torch.randn(dim))
        self.inner = nn.Module()
        self.inner.gate = self.gate  # the same Parameter under a second name
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., : self.pos.shape[-1]] + self.pos
        x, _ = self.attn(x * self.inner.gate, x, x, need_weights=False)
        return self.head(x.mean(1))


def test_resized_plain_parameters_and_attention_are_rebuilt_on_a_fresh_base(tmp_path):
    torch.manual_seed(0)
    model = Positions()
    # what channel pruning does to it: the width goes 32 -> 20 everywhere, plain Parameters included
    model.pos = nn.Parameter(torch.randn(1, 6, 20))
    model.gate = model.inner.gate = nn.Parameter(torch.randn(20))
    model.attn = nn.MultiheadAttention(20, 4, batch_first=True)
    model.head = nn.Linear(20, 3)
    model.eval()
    x = torch.randn(2, 6, 32)
    torchslim.save(model, tmp_path / "narrow")
    manifest = json.loads((tmp_path / "narrow" / "manifest.json").read_text())
    assert {"module": "", "name": "pos", "shape": [1, 6, 20]} in manifest["parameters"]
    assert {"module": "inner", "name": "gate", "shape": [20], "same_as": "gate"} in manifest["parameters"]
    layers = {rec["path"]: rec for rec in manifest["layers"]}
    assert layers["attn"]["args"]["embed_dim"] == 20 and layers["attn"]["args"]["num_heads"] == 4
    base = Positions().eval()
    check = untouched(base)
    loaded = torchslim.load(tmp_path / "narrow", base).eval()
    check()
    assert loaded.pos.shape == (1, 6, 20) and loaded.inner.gate is loaded.gate
    assert (loaded.attn.embed_dim, loaded.attn.head_dim) == (20, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert_state_bit_identical(model, loaded)


def test_a_plain_parameter_the_base_model_lacks_is_named(tmp_path):
    model = Positions()
    model.extra = nn.Parameter(torch.zeros(3))
    torchslim.save(model, tmp_path / "more")
    with pytest.raises(torchslim.SaveLoadError, match="parameter 'extra'.*base model does not have"):
        torchslim.load(tmp_path / "more", Positions())


def test_run_result_saves_its_recipe_and_metrics(tmp_path):
    recipe = torchslim.Recipe.from_dict({"steps": [{"compress": {"method": "magnitude", "sparsity": 0.9}}]})
    result = RunResult(model=prune(digits(), 0.9), recipe=recipe, baseline={"accuracy": 0.97, "odd": float("nan")},
                       steps=[])
    torchslim.save(result, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["recipe"] == recipe.to_dict()
    assert manifest["metrics"] == {"baseline": {"accuracy": 0.97, "odd": None}}  # JSON has no NaN
    assert manifest["torchslim_version"] == torchslim.__version__
    assert manifest["format_version"] == FORMAT_VERSION
    loaded = torchslim.load(tmp_path / "run", zoo.DigitsCNN()).eval()
    assert torch.equal(loaded(X), result.model(X))


def test_save_is_deterministic_and_leaves_the_model_alone(tmp_path):
    model = prune(digits(), 0.8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torchslim.save(model, tmp_path / "a")
    torchslim.save(model, tmp_path / "b")
    for name in ("manifest.json", "model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert all(torch.equal(raw_bits(model.state_dict()[k]), raw_bits(v)) for k, v in state.items())


def test_load_never_unpickles(tmp_path, monkeypatch):
    torchslim.save(prune(digits(), 0.5), tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    torchslim.load(tmp_path / "m", zoo.DigitsCNN())


def test_saved_size_bytes_shrinks_with_sparsity():
    sizes = [io.saved_size_bytes(prune(digits(), s)) for s in (0.5, 0.9)]
    dense = io.saved_size_bytes(digits())
    assert dense > sizes[0] > sizes[1]


# ----------------------------------------------------------------------------------------- failures
def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_manifest(path: Path, change, *, reseal: bool) -> None:
    data = json.loads(path.read_text())
    change(data)
    if reseal:
        data["checksum"] = checksum_of(data)
    path.write_text(json.dumps(data))


DAMAGE = {
    "weights altered": (lambda d: flip_byte(d / "model.safetensors", -10), r"model\.safetensors.*altered"),
    "weights truncated": (lambda d: truncate(d / "model.safetensors"), r"model\.safetensors is truncated"),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors is missing"),
    "manifest truncated": (lambda d: truncate(d / "manifest.json"), r"manifest\.json is not valid JSON"),
    "manifest altered": (
        lambda d: edit_manifest(d / "manifest.json", lambda m: m["layers"][0]["args"].update(out_channels=8),
                                reseal=False),
        r"manifest\.json was altered"),
    "newer format": (
        lambda d: edit_manifest(d / "manifest.json", lambda m: m.update(format_version=FORMAT_VERSION + 1),
                                reseal=True),
        rf"format version {FORMAT_VERSION + 1} .*reads format versions up to {FORMAT_VERSION}.*[Uu]pgrade torchslim"),
    "not a torchslim manifest": (
        lambda d: (d / "manifest.json").write_text('{"hello": 1}'), r"not a torchslim manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_directories_give_clear_errors_and_change_nothing(tmp_path, damage):
    apply, pattern = DAMAGE[damage]
    torchslim.save(prune(digits(), 0.9), tmp_path / "m")
    apply(tmp_path / "m")
    base = zoo.DigitsCNN()
    check = untouched(base)
    with pytest.raises(torchslim.SaveLoadError, match=pattern):
        torchslim.load(tmp_path / "m", base)
    check()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(torchslim.SaveLoadError, match="does not exist"):
        torchslim.load(tmp_path / "nowhere", zoo.DigitsCNN())


def test_wrong_base_model_names_the_first_mismatching_key(tmp_path):
    torchslim.save(digits(), tmp_path / "m")
    base = zoo.MLP()
    check = untouched(base)
    with pytest.raises(torchslim.SaveLoadError, match=r"saved from torchslim\.zoo\.DigitsCNN.*first mismatching key 'conv1\.weight'"):
        torchslim.load(tmp_path / "m", base)
    check()


def test_a_different_layer_type_at_a_path_is_named(tmp_path):
    torchslim.save(digits(), tmp_path / "m")
    base = zoo.DigitsCNN()
    base.bn2 = nn.BatchNorm1d(64)
    with pytest.raises(torchslim.SaveLoadError, match=r"'bn2'.*BatchNorm2d.*BatchNorm1d"):
        torchslim.load(tmp_path / "m", base)


# ----------------------------------------------------------------------------------------- atomic writes
def test_a_failed_save_leaves_the_previous_save_intact(tmp_path, monkeypatch):
    first = prune(digits(0), 0.9)
    torchslim.save(first, tmp_path / "m")
    real = writer.save_file

    def write_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(writer, "save_file", write_then_fail)
    with pytest.raises(torchslim.SaveLoadError, match="disk full.*unchanged"):
        torchslim.save(prune(digits(1), 0.5), tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no scratch directories left behind
    loaded = torchslim.load(tmp_path / "m", zoo.DigitsCNN()).eval()
    assert torch.equal(loaded(X), first(X))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_saving_again_replaces_the_previous_save(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    torchslim.save(prune(digits(0), 0.9), tmp_path / "m")
    second = prune(digits(1), 0.5)
    torchslim.save(second, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    loaded = torchslim.load(tmp_path / "m", zoo.DigitsCNN()).eval()
    assert torch.equal(loaded(X), second(X))


def test_save_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(torchslim.SaveLoadError, match="notes.txt"):
        torchslim.save(digits(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_save_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(torchslim.SaveLoadError, match="RunResult or an nn.Module"):
        torchslim.save({"weight": torch.zeros(2)}, tmp_path / "m")


def test_a_parametrized_base_model_is_left_working_when_loading_fails(tmp_path):
    torchslim.save(prune(digits(), 0.9), tmp_path / "m")
    base = zoo.DigitsCNN().eval()
    masks.apply_mask(base.conv1, "bias", torch.ones(32, dtype=torch.bool))  # not in the saved model
    expected = base(X)
    with pytest.raises(torchslim.SaveLoadError, match="first mismatching key .conv1.bias."):
        torchslim.load(tmp_path / "m", base)
    # torch shares generated Parametrized* classes between a module and its deep copy; masking the
    # copy's conv1.weight must not have leaked into the base model's class
    assert not parametrize.is_parametrized(base.conv1, "weight")
    assert torch.equal(base(X), expected)


def test_saving_through_a_symlink_replaces_the_linked_directory(tmp_path):
    torchslim.save(digits(0), tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    second = prune(digits(1), 0.5)
    torchslim.save(second, tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    loaded = torchslim.load(tmp_path / "real", zoo.DigitsCNN()).eval()
    assert torch.equal(loaded(X), second(X))


def test_a_manifest_of_torchslim_0_1_with_old_module_kind_names_loads(tmp_path):
    torch.manual_seed(0)
    model = zoo.DigitsCNN()
    model.fc1 = lowrank.LowRankLinear(1024, 128, rank=16)
    torchslim.save(model, tmp_path / "old")
    # 0.1 named the factor modules by their old home, torchslim.lowrank
    edit_manifest(tmp_path / "old" / "manifest.json",
                  lambda m: [rec.update(kind=rec["kind"].replace("torchslim.plugins.svd.modules.", "torchslim.lowrank."))
                             for rec in m["modules"]], reseal=True)
    assert "torchslim.lowrank.LowRankLinear" in (tmp_path / "old" / "manifest.json").read_text()
    loaded = torchslim.load(tmp_path / "old", zoo.DigitsCNN()).eval()
    assert isinstance(loaded.fc1, lowrank.LowRankLinear)
    torch.testing.assert_close(loaded(X), model.eval()(X))
