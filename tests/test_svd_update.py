"""``svd`` ``update``: the sequential closed-form refit lowers the output error on held-out inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import held_out_error, hidden_states, run_step, tiny_bert, token_batches

import torchslim

transformers = pytest.importorskip("transformers")


def batches(seed: int, count: int) -> list[dict[str, torch.Tensor]]:
    return token_batches(seed, count)


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


def test_update_lowers_held_out_output_error_and_keeps_the_macs(bert):
    calib, held_out = batches(1, 6), batches(2, 4)
    reference = hidden_states(bert, held_out)
    base = {"method": "svd", "mac_ratio": 0.5, "mac_scope": "targets", "data_aware": True,
            "measure_latency": False, "calibration_batches": 6, "targets": {"include": ["encoder.layer.*"]}}
    errors, ratios = {}, {}
    for update in (False, True):
        step = {"accelerate": {**base, "update": update}}
        result = run_step(bert, step, calib)
        errors[update] = held_out_error(result.model.eval(), reference, held_out)
        ratios[update] = result.steps[0].info["mac_ratio"]
        if update:
            assert result.steps[0].info["layers_updated"] > 0
    assert ratios[True] == pytest.approx(ratios[False])
    assert errors[True] < 0.97 * errors[False], errors  # measured: 4.7% lower


def test_update_needs_data_aware():
    with pytest.raises(ValueError, match="update=true refits factors on calibration activations: set data_aware"):
        torchslim.plugins.svd.SVDOptions(update=True)


def test_calibration_spilled_to_disk_prunes_exactly_as_in_memory(bert, monkeypatch):
    """More calibration tokens than ``$TORCHSLIM_CALIBRATION_MB`` allows go to a temporary folder: the
    same masks and weights, with the stream's in-memory hidden states held under the limit."""
    from torchslim.calibration import BlockStream

    calib = batches(3, 6)
    step = {"compress": {"method": "magnitude", "sparsity": 0.5, "criterion": "activation", "scope": "row",
                         "reconstruct": True, "calibration_batches": 6, "targets": {"include": ["encoder.layer.*"]}}}
    batch_bytes = 8 * 24 * 64 * 4
    weights = {}
    for limit_mb in (None, 2.5 * batch_bytes / 2 ** 20):  # default (all in memory), then 2 of 6 batches
        if limit_mb is not None:
            monkeypatch.setenv("TORCHSLIM_CALIBRATION_MB", str(limit_mb))
            stream = BlockStream.open(bert, calib)
            assert stream.hidden.on_disk == 4 and stream.hidden.in_memory == 2 * batch_bytes
            folder = stream.hidden.folder
            stream.run(0, advance=True)
            assert stream.hidden.on_disk == 4 and stream.tokens() == 6 * 8 * 24
            del stream
            assert not folder.exists()  # the temporary folder goes with its stream
        result = torchslim.Engine().run(bert, {"steps": [step], "evaluate": []}, train_data=calib,
                                        example_inputs=calib[0])
        weights[limit_mb] = {k: v.clone() for k, v in result.model.state_dict().items()}
    spilled, in_memory = weights.values()
    assert spilled.keys() == in_memory.keys()
    for name in in_memory:
        torch.testing.assert_close(spilled[name], in_memory[name], rtol=0, atol=0)


def test_a_calibration_limit_that_is_not_a_number_is_named(monkeypatch):
    from torchslim.calibration.spill import memory_limit_bytes

    monkeypatch.setenv("TORCHSLIM_CALIBRATION_MB", "lots")
    with pytest.raises(ValueError, match="TORCHSLIM_CALIBRATION_MB='lots'"):
        memory_limit_bytes()
