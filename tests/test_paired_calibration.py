"""Paired calibration (``match``): reconstruction toward the dense model's outputs and the residual stream."""

from __future__ import annotations

import pytest
import torch
from helpers import held_out_error, hidden_states, run_step, tiny_bert, token_batches

import torchslim
from torchslim.calibration import BlockStream, PairedBlocks, paired_stats, sum_points
from torchslim.calibration.paired import BLOCK_OUTPUT
from torchslim.calibration.spill import memory_limit_bytes
from torchslim.errors import RecipeError

transformers = pytest.importorskip("transformers")


def batches(seed: int, count: int) -> list[dict[str, torch.Tensor]]:
    return token_batches(seed, count, padding=True)  # padding, which no statistic may count


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=200, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2Model(config).eval()


def test_sum_points_find_the_layers_added_into_the_residual_stream(bert, gpt2):
    """Post-LN BERT: the attention output and the FFN output add into a LayerNorm's input; pre-LN GPT-2
    (Conv1D layers): the attention projection adds into ln_2's input, the MLP projection into the block's
    output. Query/key/value and the FFN's first layer feed non-linear paths and have no sum point."""
    stream = BlockStream.open(bert, batches(1, 1))
    names = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]
    assert sum_points(stream.blocks[0], names, stream.batch_inputs(0)) == {
        "attention.output.dense": "attention.output.LayerNorm", "output.dense": "output.LayerNorm"}
    stream = BlockStream.open(gpt2, batches(1, 1))
    names = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert sum_points(stream.blocks[0], names, stream.batch_inputs(0)) == {"attn.c_proj": "ln_2",
                                                                        "mlp.c_proj": BLOCK_OUTPUT}


def test_paired_stats_of_an_unchanged_model_are_its_own_gram(bert):
    """Before anything is compressed the dense and compressed streams agree token by token: every target
    is the layer's own output (cross = Gram, drift = 0), and padding never counts."""
    paired = PairedBlocks.open(bert, batches(2, 2))
    assert paired.dense.hidden.limit + paired.compressed.hidden.limit == memory_limit_bytes()  # one budget
    index, reference = next(paired.walk())
    names = ["attention.self.query", "attention.output.dense", "output.dense"]
    block = paired.blocks[index]
    points = sum_points(block, names, paired.compressed.batch_inputs(0))
    stats = paired_stats(block, reference, names, paired.compressed, paired.dense, "stream", points)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches(2, 2))
    for name in names:
        entry = stats[name]
        assert torch.allclose(entry.cross, entry.gram, rtol=1e-5, atol=1e-6)
        assert (entry.drift is None) == (name == "attention.self.query")
        if entry.drift is not None:
            assert float(entry.drift.abs().max()) < 1e-6 * float(entry.gram.abs().max())
    assert float(stats["attention.self.query"].gram.trace()) > 0
    hidden = block.attention.self.query.in_features
    assert stats["attention.self.query"].gram.shape == (hidden, hidden)
    assert tokens == 2 * (8 * 24 - 2 * 6)


def test_magnitude_match_lowers_the_held_out_error_of_2_4_pruning(bert):
    """2:4 with reconstruction: reproducing the dense outputs ('dense') and the residual's drift ('stream')
    leaves a smaller output error on held-out batches than fitting each layer to its own outputs."""
    calib, held_out = batches(3, 6), batches(4, 4)
    reference = hidden_states(bert, held_out)
    errors = {}
    for match in ("layer", "dense", "stream"):
        step = {"compress": {"method": "magnitude", "pattern": "2:4", "criterion": "activation", "reconstruct": True,
                             "match": match, "calibration_batches": 6, "targets": {"include": ["encoder.layer.*"]}}}
        result = run_step(bert, step, calib)
        assert result.steps[0].info["match"] == match
        weight = result.model.encoder.layer[1].output.dense.weight.detach()
        assert bool((weight.view(weight.shape[0], -1, 4) != 0).sum(-1).le(2).all())
        errors[match] = held_out_error(result.model.eval(), reference, held_out)
    assert errors["stream"] < 0.7 * errors["layer"], errors  # measured: 0.52x
    assert errors["dense"] < 0.85 * errors["layer"], errors  # measured: 0.66x


def test_svd_update_stream_lowers_the_held_out_error(bert):
    calib, held_out = batches(5, 6), batches(6, 4)
    reference = hidden_states(bert, held_out)
    errors = {}
    for match in ("dense", "stream"):
        step = {"accelerate": {"method": "svd", "mac_ratio": 0.5, "mac_scope": "targets", "data_aware": True,
                               "update": True, "match": match, "measure_latency": False, "calibration_batches": 6,
                               "targets": {"include": ["encoder.layer.*"]}}}
        errors[match] = held_out_error(run_step(bert, step, calib).model.eval(), reference, held_out)
    assert errors["stream"] < 0.97 * errors["dense"], errors  # measured: 0.93x


def test_match_needs_the_exact_update():
    with pytest.raises(RecipeError, match="match 'stream' is solved by the exact update"):
        torchslim.plugins.magnitude.prune(torch.nn.Linear(4, 4), reconstruct=True, update="sweep", match="stream")
    options = torchslim.plugins.magnitude.MagnitudeOptions(reconstruct=True, update="sweep")
    assert not options.paired  # 0.2's sweep keeps 0.2's target
