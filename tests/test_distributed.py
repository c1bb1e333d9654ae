"""Fine-tuning under ``torchrun --nproc-per-node 2`` (gloo, CPU) on the digits data.

One real torchrun launch of ``tests/ddp_script.py`` (magnitude pruning at 0.8, then two ``sgd`` steps,
through ``torchslim.Engine().run``) is compared rank against rank and against the same script run in
this single process with the same global batch (64) and seed.

Tolerances against the single process:

- MLP (no BatchNorm): 1e-5 absolute on every weight. Both runs see the same 64 samples in every step;
  the only difference is that DDP averages two 32-sample gradient means instead of taking one
  64-sample mean, a float32 rounding difference (measured: 3e-8 after 27 steps).
- DigitsCNN (BatchNorm): 0.05 absolute on every weight, accuracy within 2 points. On CPU each rank
  normalises its 32 samples with their own batch statistics (SyncBatchNorm needs CUDA), so the
  forward pass differs from the 64-sample one a single process computes (measured: 0.019).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_torchrun
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from torchslim import distributed
from torchslim.distributed import ShardSampler, sharded_loader

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "ddp_script.py"
BENCH = TESTS.parent / "bench" / "ddp.py"
MODELS = ("mlp", "cnn")


def load_script():
    spec = importlib.util.spec_from_file_location("ddp_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    proc = run_torchrun([str(SCRIPT), str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single")
    return out, load_script().run_models(out)


def weights(out: Path, rank: int, model: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"rank{rank}-{model}.safetensors"))


def masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(".mask")}


# ------------------------------------------------------------------------------ torchrun, 2 ranks
@pytest.mark.parametrize("model", MODELS)
def test_every_rank_ends_with_identical_weights(ddp, model):
    out, _ = ddp
    first, second = weights(out, 0, model), weights(out, 1, model)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert different == []


@pytest.mark.parametrize("model", MODELS)
def test_ranks_read_disjoint_halves_of_the_single_process_batches(ddp, single, model):
    """Global batch k of one process is split r, r+2, ... between the ranks; no sample is read twice."""
    _, reports = ddp
    reference = single[1][model]["seen"]
    # Step 2: one epoch of 21 batches of 64 and one of 3; step 3: 5 batches (+1 the loop reads before stopping).
    sizes = [64] * 21 + [3] + [64] * 6
    assert len(reference) == sum(sizes)
    expected: list[list[int]] = [[], []]
    start = 0
    for size in sizes:
        batch = reference[start:start + size]
        for rank in (0, 1):
            expected[rank] += batch[rank::2]
        start += size
    for rank in (0, 1):
        assert reports[rank][model]["seen"] == expected[rank]
    first_epoch = [set(reports[r][model]["seen"][:len(expected[r]) - 6 * 32]) for r in (0, 1)]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 1347


def test_mlp_matches_one_process_with_the_same_global_batch(ddp, single):
    out, _ = ddp
    ours, reference = weights(out, 0, "mlp"), weights(single[0], 0, "mlp")
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.allclose(ours[name].float(), tensor.float(), rtol=0, atol=1e-5), name


def test_cnn_with_batchnorm_stays_close_to_one_process(ddp, single):
    out, reports = ddp
    ours, reference = weights(out, 0, "cnn"), weights(single[0], 0, "cnn")
    worst = max(float((ours[k].float() - reference[k].float()).abs().max()) for k in reference)
    assert worst <= 0.05
    assert abs(reports[0]["cnn"]["metrics"][-1]["accuracy"] - single[1]["cnn"]["metrics"][-1]["accuracy"]) <= 0.02
    pruned, final = reports[0]["cnn"]["metrics"][0]["accuracy"], reports[0]["cnn"]["metrics"][-1]["accuracy"]
    assert final > pruned + 0.3  # the sharded fine-tuning did train


@pytest.mark.parametrize("model", MODELS)
def test_masks_hold_on_every_rank(ddp, single, model):
    out, reports = ddp
    reference = masks(weights(single[0], 0, model))
    assert reference, "the magnitude step made no masks"
    for rank in (0, 1):
        state = weights(out, rank, model)
        found = masks(state)
        assert found.keys() == reference.keys()
        for name, mask in found.items():
            assert torch.equal(mask, reference[name]), name
            assert float(mask.float().mean()) == pytest.approx(0.2, abs=0.01), name
            original = state[name.replace(".0.mask", ".original")]
            assert int((original * mask).count_nonzero()) <= int(mask.sum())
        nonzeros = [m["nonzeros"] for m in reports[rank][model]["metrics"]]
        if model == "mlp":  # no BatchNorm bias to grow from zero: every zero is a pruned weight
            assert nonzeros[0] == nonzeros[1] == nonzeros[2]


@pytest.mark.parametrize("model", MODELS)
def test_accuracy_is_reduced_over_the_whole_eval_set(ddp, single, model):
    _, reports = ddp
    for report in reports:
        # Same weights before training: the sharded, summed count equals the one-process count.
        assert report[model]["baseline"]["accuracy"] == single[1][model]["baseline"]["accuracy"]
        # After training: the engine's figure is that of a plain pass over all 450 test digits.
        assert report[model]["metrics"][-1]["accuracy"] == report[model]["plain_accuracy"]
        # max_eval_batches=2 of 100: the first 200 digits, split between the ranks and summed.
        ours, plain = report[model]["limited"]
        assert ours == plain


@pytest.mark.parametrize("model", MODELS)
def test_every_rank_reports_the_same_metrics(ddp, model):
    """Latency and size are measured on rank 0 and broadcast; accuracy is summed: all ranks agree."""
    first, second = (r[model] for r in ddp[1])
    assert first["baseline"] == second["baseline"]
    assert first["metrics"] == second["metrics"]
    assert all("latency_ms" in m and "size_bytes" in m for m in first["metrics"])


def test_finetune_reports_processes_and_per_process_batch(ddp):
    _, reports = ddp
    for report in reports:
        assert report["world_size"] == 2
        for info in report["mlp"]["info"][1:]:
            assert info["processes"] == 2 and info["batch_per_process"] == 32 and info["sharding"] == "sharded"


def test_unsplittable_training_data_is_refused_on_every_rank(ddp):
    _, reports = ddp
    first, second = reports[0]["errors"], reports[1]["errors"]
    assert first == second
    assert first["odd_batch"].startswith("DataError")
    assert "batch_size=63" in first["odd_batch"] and "2 processes" in first["odd_batch"]
    assert "must be a torch.utils.data.DataLoader" in first["list"] and "got list" in first["list"]


def test_distill_trains_under_ddp_like_one_process(ddp, single):
    """The contrib distill method reuses the sgd loop, so it gets DDP, sharding and the checks too."""
    if not single[1]["distill"]["installed"]:
        pytest.skip("the torchslim-distill package (contrib/) is not installed")
    out, reports = ddp
    ranks = [load_file(str(out / f"rank{r}-distill.safetensors")) for r in (0, 1)]
    reference = load_file(str(single[0] / "rank0-distill.safetensors"))
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in reference)
    for name, tensor in reference.items():
        assert torch.allclose(ranks[0][name].float(), tensor.float(), rtol=0, atol=1e-5), name
    assert reports[0]["distill"]["info"]["processes"] == 2


def test_a_users_distributed_sampler_is_kept(ddp):
    first, second = (r["user_sampler"] for r in ddp[1])
    assert first["info"]["sharding"] == "user" and first["info"]["batch_per_process"] == 16
    assert first["fingerprint"] == second["fingerprint"]


def test_sync_model_copies_rank0_values_and_refuses_other_structures(ddp):
    first, second = (r["sync"] for r in ddp[1])
    assert first["copied"] is True and second["copied"] is True
    assert first["fingerprint"] == second["fingerprint"]
    assert first["refused"] == second["refused"]
    assert "structure differs between rank 0 and ranks [1]" in first["refused"]
    assert "bias: rank 0 has ('torch.float32', (3,)), rank 1 has ('torch.float32', (4,))" in first["refused"]


# ------------------------------------------------------------------------------ one process
def test_single_process_is_not_distributed():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    value = torch.tensor([3.0])
    assert distributed.all_reduce_sum(value) is value and float(value) == 3.0
    assert distributed.main_only(lambda: 7) == 7
    model, data = torch.nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))]
    with distributed.training(model, data, "here") as run:
        assert run.model is model and run.data is data and run.loss_weight(0) == 1.0


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("replicas", [2, 3])
def test_sharded_loaders_together_read_the_single_loaders_batches(replicas, drop_last):
    """Each simulated rank's loader, reseeded like the user's loader, reads its share of every batch."""
    data = TensorDataset(torch.arange(100).float().unsqueeze(1), torch.arange(100))
    generator = torch.Generator()
    loader = DataLoader(data, batch_size=12, shuffle=True, generator=generator, drop_last=drop_last)
    generator.manual_seed(5)
    batches = [y.tolist() for _, y in loader]
    ranks = []
    for rank in range(replicas):
        shard = sharded_loader(loader, replicas, rank)
        assert len(shard) == len(loader)
        generator.manual_seed(5)
        ranks.append([y.tolist() for _, y in shard])
    for index, batch in enumerate(batches):
        assert [ranks[r][index] for r in range(replicas)] == [batch[r::replicas] for r in range(replicas)]


def test_tail_weights_make_the_mean_over_ranks_the_global_mean():
    """The last batch is split unevenly (here 2 samples over 3 ranks); weights restore the global mean."""
    losses = torch.rand(26, dtype=torch.float64)  # one loss per sample of an epoch of 26 samples
    replicas, global_batch = 3, 12
    samplers = [ShardSampler(range(26), global_batch, replicas, r) for r in range(replicas)]
    shares = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [len(s) for s in shares] == [9, 9, 9]  # 4 + 4 + (1, 1, dummy)
    tail = [share[8:] for share in shares]
    assert tail == [[24], [25], [0]]  # rank 2 has nothing left: it reads sample 0 with weight 0
    weights = [s.tail_weight() for s in samplers]
    assert weights == [1.5, 1.5, 0.0]
    ddp_mean = sum(w * losses[t].mean() for w, t in zip(weights, tail)) / replicas
    assert float(ddp_mean) == pytest.approx(float(losses[24:].mean()))


def test_shard_sampler_refuses_a_batch_that_does_not_split():
    with pytest.raises(Exception, match="global batch 10 is not divisible by 3 processes"):
        ShardSampler(range(30), 10, 3, 0)


# ------------------------------------------------------------------------------ benchmark
def test_bench_quick_measures_one_and_two_processes(tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["processes"] for r in rows} >= {1, 2}
    assert all(r["samples_per_s"] > 0 and r["samples"] > 0 for r in rows)
    assert "samples/s" in proc.stdout
