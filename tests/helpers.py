"""Small plugins and models shared by the core tests (registered at runtime, never mocked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import torchslim


class Scale:
    """Compress method that multiplies targeted weights by ``factor``."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(0.5, gt=0, le=2, description="multiplier", json_schema_extra={"strength": True})

    @torchslim.hookimpl
    def compress(self, model, step, context):
        rows = []
        with torch.no_grad():
            for name, module in torchslim.select_modules(model, step.targets):
                module.weight.mul_(step.options.factor)
                rows.append({"layer": name})
        return torchslim.StepResult(model=model, report=rows, info={"layers": len(rows)})


class WeightNorm:
    """Evaluator: the L1 norm of all parameters (lower is better, for constraint tests)."""

    metrics = {"l1": "lower", "score": "higher"}

    @torchslim.hookimpl
    def evaluate(self, model, context):
        l1 = float(sum(p.detach().abs().sum() for p in model.parameters()))
        return {"l1": l1, "score": -l1}


class Raises:
    """Accelerate method that always fails."""

    @torchslim.hookimpl
    def accelerate(self, model, step, context):
        raise RuntimeError("boom")


class ReturnsWrongType:
    """Accelerate method returning a dict instead of a StepResult."""

    @torchslim.hookimpl
    def accelerate(self, model, step, context):
        return {"model": model}


class ReturnsNaN:
    """Accelerate method that poisons the weights with NaN."""

    @torchslim.hookimpl
    def accelerate(self, model, step, context):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return torchslim.StepResult(model=model)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bare_engine(*plugins: tuple[object, str]) -> torchslim.Engine:
    """An Engine with entry-point discovery off and only the given (plugin, name) pairs."""
    engine = torchslim.Engine(discover=False)
    for plugin, name in plugins:
        engine.register(plugin, name=name)
    return engine

#: Seconds a test waits for a subprocess (a benchmark smoke run, the CLI, torchrun): far above ten times
#: its quiet-machine time, so a busy machine slows the suite down instead of failing it.
SUBPROCESS_TIMEOUT = 1800

#: What a gloo rank prints when a C++ thread of the process group is torn down while still joinable. It
#: has come once in CI (both ranks at the same moment, after a run that passes everywhere else) and
#: never in dozens of local launches, idle or loaded: a race in torch's gloo teardown, not in our code.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(args: list[str], cwd: Path | None = None, processes: int = 2) -> subprocess.CompletedProcess:
    """Launch ``torchrun --standalone`` with ``processes`` CPU ranks (one thread each) and wait for it.

    A launch whose ranks die of the gloo teardown abort is run once more; any other failure, or that
    abort twice, is returned as it is for the caller's assertion.
    """
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    command = [*launcher, "--standalone", "--nproc-per-node", str(processes), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        if proc.returncode == 0 or GLOO_TEARDOWN_ABORT not in proc.stderr:
            return proc
    return proc


def token_batches(seed: int, count: int, vocab: int = 200, padding: bool = False) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of 8 x 24 token ids drawn from a skewed distribution, so two seeds share
    statistics but not tokens (calibration and held-out text); ``padding`` pads two rows of each."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.multinomial(torch.linspace(1, 0.05, vocab), 8 * 24, replacement=True, generator=gen).view(8, 24)
        mask = torch.ones_like(ids)
        if padding:
            mask[:2, 18:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def tiny_bert(layers: int = 3, init_range: float = 0.02) -> nn.Module:
    """A randomly initialised 64-wide BERT encoder (no pooler), in eval mode; ``init_range`` is the
    weights' standard deviation (transformers' default 0.02; larger makes the layers, not the
    embeddings, carry the output)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=32, initializer_range=init_range)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def hidden_states(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The encoder's ``last_hidden_state`` on every batch of ``data``, concatenated."""
    with torch.no_grad():
        return torch.cat([model(**b).last_hidden_state for b in data])


def held_out_error(model: nn.Module, reference: torch.Tensor, data: list[dict[str, torch.Tensor]]) -> float:
    """Relative Frobenius error of ``model``'s hidden states on ``data`` against ``reference``."""
    got = hidden_states(model, data)
    return float((got - reference).norm() / reference.norm())


def run_step(model: nn.Module, step: dict, calib: list) -> torchslim.RunResult:
    """One recipe step on ``model`` (a copy; the engine leaves it alone), calibrated on ``calib``."""
    return torchslim.Engine().run(model, {"steps": [step], "evaluate": []}, train_data=calib, example_inputs=calib[0])
