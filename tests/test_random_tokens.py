"""Option ``random_tokens``: calibration batches of random vocabulary tokens beside the real ones.

The calibration text of these tests uses 8 of a small BERT's 200 token ids; the held-out text uses
all 200 (text from another source). The BERT is initialised with weights five times the usual scale,
so its layers, not the embeddings, make most of its output. Layers fitted to the narrow text alone lose the directions only
the other tokens excite; random-token batches put them back in the statistics.
"""

from __future__ import annotations

import pytest
import torch
from helpers import held_out_error, hidden_states, run_step, tiny_bert, token_batches

import torchslim
from torchslim.calibration.random_tokens import random_token_batches, vocabulary_size
from torchslim.zoo import MLP

pytest.importorskip("transformers")

SVD = {"method": "svd", "mac_ratio": 0.5, "mac_scope": "targets", "data_aware": True, "measure_latency": False,
       "calibration_batches": 12, "targets": {"include": ["encoder.layer.*"]}}

PRUNE = {"method": "magnitude", "pattern": "2:4", "criterion": "activation", "reconstruct": True,
         "calibration_batches": 12, "targets": {"include": ["encoder.layer.*"]}}


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(init_range=0.1)


def compressed_error(bert, step: dict) -> float:
    calib, held_out = token_batches(1, 6, vocab=8), token_batches(2, 4)
    return held_out_error(run_step(bert, step, calib).model.eval(), hidden_states(bert, held_out), held_out)


@pytest.mark.parametrize("update", [False, True])
def test_svd_random_tokens_lower_the_error_on_other_text(bert, update):
    errors = {ratio: compressed_error(bert, {"accelerate": {**SVD, "update": update, "random_tokens": ratio}})
              for ratio in (0.0, 1.0)}
    assert errors[1.0] < 0.95 * errors[0.0], errors  # measured: 7.6% lower one-shot, 9.7% with update


@pytest.mark.parametrize("selection", ["sweep", "admm"])
def test_magnitude_random_tokens_lower_the_error_on_other_text(bert, selection):
    errors = {ratio: compressed_error(bert, {"compress": {**PRUNE, "selection": selection, "random_tokens": ratio}})
              for ratio in (0.0, 1.0)}
    assert errors[1.0] < 0.85 * errors[0.0], errors  # measured: 28% lower (sweep), 34% (admm)


def test_random_batches_keep_shape_padding_and_the_first_and_last_token(bert):
    real = token_batches(3, 2, vocab=8, padding=True)
    extra = random_token_batches(real, 1.5, bert, "step 0")
    assert len(extra) == 3  # round(1.5 * 2), cycling through the real batches
    for batch, source in zip(extra, real + real[:1]):
        assert batch["input_ids"].shape == source["input_ids"].shape
        assert torch.equal(batch["attention_mask"], source["attention_mask"])
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        last = mask.sum(1) - 1
        rows = torch.arange(ids.shape[0])
        assert torch.equal(ids[:, 0], source["input_ids"][:, 0])
        assert torch.equal(ids[rows, last], source["input_ids"][rows, last])
        assert torch.equal(ids[~mask], source["input_ids"][~mask])  # padding untouched
        assert int(ids.max()) >= 8 and int(ids.max()) < vocabulary_size(bert) == 200  # the whole vocabulary
    again = random_token_batches(real, 1.5, bert, "step 0")
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(extra, again))  # same on every rank


def test_models_without_token_ids_get_an_error_naming_the_option():
    x = torch.randn(16, 64)
    with pytest.raises(torchslim.StepError, match=r"random_tokens=1\.0 .* no nn\.Embedding; set random_tokens: 0"):
        torchslim.Engine().run(MLP((64, 32, 10)), {"steps": [{"accelerate": {**SVD, "targets": {},
                                                                             "random_tokens": 1.0}}], "evaluate": []},
                               train_data=[(x, torch.zeros(16, dtype=torch.long))], example_inputs=(x,))
    with pytest.raises(torchslim.DataError, match=r"random_tokens=1\.0 .* no 2-D integer 'input_ids'"):
        random_token_batches([(x,)], 1.0, tiny_bert(1), "step 0")
    with pytest.raises(ValueError, match="random_tokens=1.0 adds calibration batches: set data_aware: true"):
        torchslim.plugins.svd.SVDOptions(random_tokens=1.0)
    with pytest.raises(ValueError, match="random_tokens=1.0 adds calibration batches, but nothing calibrates"):
        torchslim.plugins.magnitude.MagnitudeOptions(random_tokens=1.0)
