"""Pruning masks (torchslim.masks): zeros that survive training, tied weights, finalize."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.masks import Mask, apply_mask, finalize, get_mask, masked_parameters, parameter_holders


def random_mask(shape, keep=0.5, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) < keep


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5, in_features: int = 6) -> None:
    """A plain user training loop that knows nothing about masks."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, in_features, generator=gen)
        loss = model(x).pow(2).mean() + model(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_mask_zeroes_entries_and_zeroes_the_stored_values_too():
    layer = nn.Linear(6, 4)
    mask = random_mask((4, 6))
    returned = apply_mask(layer, "weight", mask)
    assert isinstance(returned, Mask)
    assert torch.equal(layer.weight == 0, ~mask)
    # the stored original is sparse as well, so a saved state dict compresses
    assert torch.equal(layer.parametrizations.weight.original == 0, ~mask)
    assert get_mask(layer, "weight").dtype == torch.bool
    assert get_mask(layer, "bias") is None


def test_applying_a_second_mask_ands_it_into_the_first():
    layer = nn.Linear(6, 4)
    first, second = random_mask((4, 6), seed=0), random_mask((4, 6), seed=1)
    one = apply_mask(layer, "weight", first)
    two = apply_mask(layer, "weight", second)
    assert one is two  # one parametrization, not a stack of them
    assert len(layer.parametrizations.weight) == 1
    assert torch.equal(get_mask(layer, "weight"), first & second)
    assert torch.equal(layer.weight != 0, first & second)


def test_mask_of_the_wrong_shape_is_rejected_naming_both_shapes():
    layer = nn.Linear(6, 4)
    with pytest.raises(torchslim.ModelError, match=r"\(4, 5\).*\(4, 6\)"):
        apply_mask(layer, "weight", torch.ones(4, 5, dtype=torch.bool))
    assert not parametrize.is_parametrized(layer)


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.5, weight_decay=0.1),
], ids=["sgd-momentum-decay", "adamw"])
def test_zeros_hold_through_a_fresh_mask_unaware_optimizer(make_optimizer):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = {0: random_mask((8, 6), seed=2), 2: random_mask((3, 8), seed=3)}
    for index, mask in masks.items():
        apply_mask(model[index], "weight", mask)
    before = [model[i].weight.detach().clone() for i in masks]
    train(model, make_optimizer(model.parameters()))
    for (index, mask), old in zip(masks.items(), before):
        weight = model[index].weight
        assert torch.all(weight[~mask] == 0)
        assert not torch.equal(weight, old)  # training did change the kept weights


def test_zeros_hold_for_an_optimizer_created_before_the_masks():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    train(model, optimizer, steps=2)  # momentum buffers now hold non-zero entries everywhere
    mask = random_mask((8, 6), seed=4)
    apply_mask(model[0], "weight", mask)
    train(model, optimizer, steps=5)
    # the optimizer kept training the very same Parameter object (now the parametrization's original)
    assert any(p is model[0].parametrizations.weight.original for p in optimizer.param_groups[0]["params"])
    assert torch.all(model[0].weight[~mask] == 0)


def test_masked_parameters_lists_every_mask_and_finalize_bakes_them():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    apply_mask(model[0], "weight", random_mask((8, 6), seed=5))
    apply_mask(model[2], "bias", random_mask((3,), seed=6))
    listed = {(name, param) for name, _, param, _ in masked_parameters(model)}
    assert listed == {("0", "weight"), ("2", "bias")}
    x = torch.randn(4, 6)
    expected = model(x)
    finalize(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert masked_parameters(model) == []
    assert isinstance(model[0].weight, nn.Parameter)
    torch.testing.assert_close(model(x), expected)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_tied_weight_shares_one_mask_and_stays_tied_through_training_and_finalize():
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    holders = parameter_holders(model)[id(a.weight)]
    assert [(name, param) for name, _, param in holders] == [("0", "weight"), ("2", "weight")]
    shared = apply_mask(a, "weight", random_mask((6, 6), seed=7))
    assert apply_mask(b, "weight", shared) is shared
    assert a.parametrizations.weight.original is b.parametrizations.weight.original
    train(model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9))
    assert torch.equal(a.weight, b.weight)
    assert torch.all(a.weight[~shared.mask] == 0)
    copied = copy.deepcopy(model)
    assert copied[0].parametrizations.weight[0] is copied[2].parametrizations.weight[0]
    finalize(model)
    assert model[0].weight is model[2].weight
    assert torch.all(model[0].weight[~shared.mask] == 0)


def test_masked_lstm_trains_deep_copies_and_finalizes():
    lstm = nn.LSTM(6, 5, num_layers=2)
    masks = {name: random_mask(getattr(lstm, name).shape, seed=i)
             for i, name in enumerate(["weight_ih_l0", "weight_hh_l1"])}
    for name, mask in masks.items():
        apply_mask(lstm, name, mask)
    optimizer = torch.optim.Adam(lstm.parameters(), lr=0.1)
    x = torch.randn(7, 3, 6)
    for _ in range(3):
        loss = lstm(x)[0].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    copied = copy.deepcopy(lstm)  # the engine and many training loops copy models
    torch.testing.assert_close(copied(x)[0], lstm(x)[0])
    for name, mask in masks.items():
        assert torch.all(getattr(lstm, name)[~mask] == 0)
    expected = lstm(x)[0]
    finalize(lstm)
    assert not parametrize.is_parametrized(lstm)
    torch.testing.assert_close(lstm(x)[0], expected)
    copy.deepcopy(lstm)
