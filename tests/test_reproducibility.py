"""Same recipe and seed give bit-identical weights; a faulty plugin stops the run and loses nothing.

Faults (raises, wrong return type, NaN weights, hangs past ``timeout``) stop the run with a
:class:`~torchslim.StepError` naming plugin and step; with ``out_dir`` the checkpoint of the last
finished step stays, and a rerun after the fault is fixed resumes from it.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

import torchslim
from torchslim.demo import digits_loaders
from torchslim.zoo import DigitsCNN

from helpers import SUBPROCESS_TIMEOUT, same_state, state_copy

RECIPE = {
    "steps": [
        {"compress": {"method": "magnitude", "sparsity": 0.6, "criterion": "activation", "calibration_batches": 2}},
        # measure_latency decides by wall-clock timing, which no seed fixes; off for bit-identical runs
        {"accelerate": {"method": "svd", "rank_ratio": 0.5, "measure_latency": False, "data_aware": True,
                        "calibration_batches": 2}},
        {"finetune": {"method": "sgd", "epochs": 1, "lr": 0.05, "max_batches_per_epoch": 6}},
    ],
    "evaluate": ["accuracy", "nonzeros"],
}


def _digits_run(seed: int) -> torchslim.RunResult:
    train, test = digits_loaders(batch_size=64, seed=0)
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    # a fresh engine per run: nothing may carry over between runs but the inputs
    return torchslim.Engine().run(model, RECIPE, train_data=train, eval_data=test, seed=seed)


def test_same_recipe_and_seed_give_bit_identical_weights():
    first, second = _digits_run(seed=3), _digits_run(seed=3)
    a, b = state_copy(first.model), state_copy(second.model)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ between identical runs: {differing[:5]}"
    assert first.metrics == second.metrics
    # the check can fail: another seed changes the fine-tuning order, hence the weights
    other = state_copy(_digits_run(seed=4).model)
    assert not same_state(a, other)


# ------------------------------------------------------------------------------------ plugin faults
class Counted:
    """Compress method that halves Linear weights and counts its calls (to see what a resume reruns)."""

    calls = 0

    @torchslim.hookimpl
    def compress(self, model, step, context):
        type(self).calls += 1
        with torch.no_grad():
            for _, module in torchslim.select_modules(model, step.targets):
                module.weight.mul_(0.5)
        return torchslim.StepResult(model=model)


class Faulty:
    """Accelerate method that fails in the way ``mode`` names (``fine`` returns the model untouched)."""

    def __init__(self, mode: str, release: threading.Event | None = None) -> None:
        self.mode = mode
        self.release = release

    @torchslim.hookimpl
    def accelerate(self, model, step, context):
        if self.mode == "raises":
            raise KeyError("no such layer: fc9")
        if self.mode == "wrong-type":
            return [model]
        if self.mode == "nan":
            with torch.no_grad():
                model[2].weight[0, 0] = float("nan")
        if self.mode == "hangs":
            self.release.wait(30)
        return torchslim.StepResult(model=model)


FAULTS = {
    "raises": r"step 2 \(accelerate/faulty\) failed in plugin 'faulty' .*KeyError: 'no such layer: fc9'",
    "wrong-type": r"step 2 \(accelerate/faulty\): plugin 'faulty' .*returned list; .*must return torchslim.StepResult",
    "nan": r"step 2 \(accelerate/faulty\): plugin 'faulty' .*returned a model whose 2.weight holds NaN",
    "hangs": r"step 2 \(accelerate/faulty\): plugin 'faulty' .*did not finish within timeout=0.3s",
}
FAULT_RECIPE = {
    "steps": [{"compress": {"method": "counted"}}, {"accelerate": {"method": "faulty", "timeout": 0.3}},
              {"compress": {"method": "counted"}}],
    "evaluate": [],
}


def _engine(fault: Faulty) -> torchslim.Engine:
    engine = torchslim.Engine(discover=False)
    engine.register(Counted(), name="counted")
    engine.register(fault, name="faulty")
    return engine


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("mode", list(FAULTS))
def test_plugin_fault_stops_the_run_and_keeps_earlier_checkpoints(tmp_path, mode):
    release = threading.Event()
    model = _model()
    before = state_copy(model)
    Counted.calls = 0
    try:
        with pytest.raises(torchslim.StepError, match=FAULTS[mode]):
            _engine(Faulty(mode, release)).run(model, FAULT_RECIPE, example_inputs=(torch.randn(2, 6),),
                                               out_dir=tmp_path)
    finally:
        release.set()  # let an abandoned hanging thread finish
    assert same_state(before, state_copy(model)), "the input model was changed"
    assert Counted.calls == 1, "the step after the fault must not run"

    progress = json.loads((tmp_path / "checkpoints" / "progress.json").read_text())
    assert progress["checkpoint"] == "step-001"
    assert [r["label"] for r in progress["records"]] == ["compress/counted"]
    saved = torchslim.load(tmp_path / "checkpoints" / "step-001", base_model=_model())
    expected = _model()
    with torch.no_grad():
        for layer in (expected[0], expected[2]):
            layer.weight.mul_(0.5)
    assert same_state(state_copy(saved), state_copy(expected)), "the checkpoint is not the model after step 1"

    # fixed plugin, same recipe and out_dir: the run resumes after step 1 instead of starting over
    Counted.calls = 0
    result = _engine(Faulty("fine")).run(model, FAULT_RECIPE, example_inputs=(torch.randn(2, 6),), out_dir=tmp_path)
    assert Counted.calls == 1, "step 1 was rerun instead of resumed from its checkpoint"
    assert [s.label for s in result.steps] == ["compress/counted", "accelerate/faulty", "compress/counted"]
    with torch.no_grad():
        for layer in (expected[0], expected[2]):
            layer.weight.mul_(0.5)
    assert same_state(state_copy(result.model), state_copy(expected))


# ------------------------------------------------------------------------------------ resource bounds
def test_memory_bench_quick_measures_every_case(tmp_path):
    """bench/memory.py --quick runs each case in a fresh process and writes the figures it prints."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "memory.py"
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    cases = data["cases"]
    assert set(cases) == {"model", "engine", "magnitude", "svd"} and data["floor"] == 3.0
    model_mb = cases["model"]["model_mb"]
    assert model_mb == pytest.approx(4 * cases["model"]["params"] / 2**20)
    # building the model costs about its float32 size; running the engine costs more (its copies)
    assert 0.8 < cases["model"]["ratio"] < 2.0
    assert cases["engine"]["peak_above_baseline_mb"] > cases["model"]["peak_above_baseline_mb"] + 0.5 * model_mb
    for case in ("magnitude", "svd"):
        assert cases[case]["step_peak_mb"] is not None and cases[case]["step_peak_mb"] >= 0
        assert cases[case]["within_floor"] == (cases[case]["ratio"] < 3.0)
    assert "engine copies" in done.stdout and "magnitude" in done.stdout
