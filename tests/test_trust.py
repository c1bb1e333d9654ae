"""Results a user can trust: no silent gaps, targets met or failed, and a returned model that works with
the tools people point at it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torchslim
from torchslim.masks import masked_parameters
from torchslim.zoo import DigitsCNN


class TinyLM(nn.Module):
    """An embedding, two Linears and an output head tied to the embedding (as GPT-2's lm_head is)."""

    def __init__(self, vocab: int = 64, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.body(self.embed(ids)))


def _run(model, steps, **kwargs):
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (4, 8))
    return torchslim.Engine().run(model, {"steps": steps, "evaluate": ["params", "nonzeros"]},
                                  example_inputs=(ids,), **kwargs)


def test_a_large_tensor_the_default_targets_leave_out_is_a_warning_in_the_table():
    torch.manual_seed(0)
    model = TinyLM()
    model.head = nn.Linear(32, 64, bias=False)  # untied: the embedding is only an Embedding
    result = _run(model, [{"compress": {"method": "magnitude", "sparsity": 0.5}}])
    (warning,) = [w for w in result.steps[0].warnings if "large tensor" in w]
    assert "embed.weight (Embedding" in warning and "targets.types" in warning
    assert "warnings:" in result.table() and "embed.weight" in result.table()
    targeted = _run(TinyLM(), [{"compress": {"method": "magnitude", "sparsity": 0.5,
                                             "targets": {"include": ["body.*"]}}}])
    assert not any("large tensor" in w for w in targeted.steps[0].warnings)  # set explicitly: no word needed


def test_a_tied_weight_held_outside_the_targets_is_skipped_with_the_reason():
    model = TinyLM()
    embedding = model.embed.weight.detach().clone()
    result = _run(model, [{"compress": {"method": "magnitude", "sparsity": 0.5}}])
    reasons = [why for name, why in result.steps[0].skipped if name == "head.weight"]
    assert reasons and "embed.weight" in reasons[0]
    torch.testing.assert_close(result.model.embed.weight, embedding)  # the embedding is not zeroed
    assert result.model.head.weight is result.model.embed.weight  # and stays tied


def test_a_step_that_changes_nothing_says_so():
    result = _run(TinyLM(), [{"compress": {"method": "magnitude", "sparsity": 0.0}}])
    assert any("changed nothing" in w for w in result.steps[0].warnings)
    assert any("changed nothing" in w for w in result.warnings)


def test_a_pruned_model_works_with_the_tools_people_point_at_it():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    result = torchslim.Engine().run(DigitsCNN(width=8), {"steps": [{"compress": {"method": "magnitude",
                                                                                   "sparsity": 0.5}}],
                                                         "evaluate": []}, example_inputs=(x,))
    model = result.model
    expected = model(x)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() > 0
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)
    torch.testing.assert_close(torch.jit.trace(model, (x,))(x), expected)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    torch.testing.assert_close(torch.compile(model, backend="eager")(x), expected)


def test_bake_masks_returns_plain_modules_with_the_zeros():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5}}], "evaluate": ["nonzeros"]}
    model = DigitsCNN(width=8).eval()
    masked = torchslim.Engine().run(model, recipe, example_inputs=(x,))
    baked = torchslim.Engine().run(model, {**recipe, "bake_masks": True}, example_inputs=(x,))
    assert masked_parameters(masked.model) and not masked_parameters(baked.model)
    assert baked.final["nonzeros"] == masked.final["nonzeros"]
    torch.testing.assert_close(baked.model(x), masked.model(x))


def test_loading_into_the_wrong_base_model_names_the_saved_class(tmp_path):
    result = _run(TinyLM(), [{"compress": {"method": "magnitude", "sparsity": 0.5,
                                           "targets": {"include": ["body.*"]}}}])
    torchslim.save(result, tmp_path / "m")
    with pytest.raises(torchslim.SaveLoadError, match=r"saved from test_trust.TinyLM.*base_model is .*DigitsCNN"):
        torchslim.load(tmp_path / "m", base_model=DigitsCNN())
