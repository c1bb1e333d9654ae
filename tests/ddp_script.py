"""Prune and fine-tune the digits models through ``torchslim.Engine().run``, once per process.

``tests/test_distributed.py`` runs this file under ``torchrun --nproc-per-node 2`` and imports it for
the single-process reference (:func:`run_models`). Each rank writes into ``OUT``:

- ``rank{R}-{model}.safetensors``: the final state dict (masks are the ``...parametrizations.weight.0.mask``
  entries, trained weights the ``...original`` ones);
- ``rank{R}.json``: metrics, fine-tuning info, the dataset indices this rank read during fine-tuning,
  a plain full-eval-set accuracy of the final model, and the errors of two bad inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim import distributed
from torchslim.demo import digits_tensors
from torchslim.zoo import MLP, DigitsCNN

GLOBAL_BATCH = 64
SEED = 3
RECIPE = {
    "steps": [
        {"compress": {"method": "magnitude", "sparsity": 0.8}},
        # One epoch: 21 full global batches of 64 and a last one of 3 (1347 training digits).
        {"finetune": {"method": "sgd", "epochs": 1, "lr": 0.05}},
        # A second fine-tuning step wraps the model in DDP again: the first wrapper must be gone.
        {"finetune": {"method": "sgd", "steps": 5, "lr": 0.01, "schedule": "constant", "grad_clip": 1.0}},
    ],
    # latency and size are measured by rank 0 alone and broadcast: every rank must report the same.
    "evaluate": ["accuracy", "nonzeros", "latency", "size"],
    "evaluation": {"latency_runs": 2, "latency_warmup": 0},
}


class RecordingDataset(TensorDataset):
    """A TensorDataset that remembers which indices were read, in order."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__(*tensors)
        self.seen: list[int] = []

    def __getitem__(self, index: int):
        self.seen.append(int(index))
        return super().__getitem__(index)


def build(name: str) -> torch.nn.Module:
    """The model, initialised from the fixed seed (identically on every rank)."""
    torch.manual_seed(SEED)
    return DigitsCNN(width=8) if name == "cnn" else MLP((64, 64, 10))


def loaders() -> tuple[DataLoader, DataLoader, RecordingDataset]:
    x_train, y_train, x_test, y_test = digits_tensors()
    train_set = RecordingDataset(x_train, y_train)
    train = DataLoader(train_set, batch_size=GLOBAL_BATCH, shuffle=True,
                       generator=torch.Generator().manual_seed(SEED))
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=100)
    return train, test, train_set


def plain_accuracy(model: torch.nn.Module, test: DataLoader) -> float:
    """Accuracy over the whole test set, one process, no torchslim code involved."""
    model.eval()
    xs, ys = test.dataset.tensors
    with torch.no_grad():
        return int((model(xs).argmax(1) == ys).sum()) / len(ys)


def run_model(name: str, out: Path) -> dict:
    """Run the recipe on one model; save this rank's final state dict; return what the test checks."""
    train, test, train_set = loaders()
    model = build(name)
    example = (train_set.tensors[0][:2],)  # explicit, so the engine reads no training batch itself
    result = torchslim.Engine().run(model, RECIPE, train_data=train, eval_data=test, example_inputs=example,
                                    seed=SEED)
    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{distributed.rank()}-{name}.safetensors"))
    return {
        "baseline": result.baseline,
        "metrics": [s.metrics for s in result.steps],
        "info": [s.info for s in result.steps],
        "seen": train_set.seen,
        "plain_accuracy": plain_accuracy(result.model, test),
        "limited": limited_accuracy(result.model, test),
    }


def limited_accuracy(model: torch.nn.Module, test: DataLoader) -> tuple[float, float]:
    """(the accuracy plugin with max_eval_batches=2, a plain count over the first 200 test digits)."""
    from torchslim.plugins.evaluators import Accuracy
    from torchslim.recipe import Evaluation

    context = torchslim.RunContext(eval_data=test, evaluation=Evaluation(max_eval_batches=2))
    ours = Accuracy().evaluate(model=model, context=context)["accuracy"]
    xs, ys = test.dataset.tensors
    with torch.no_grad():
        plain = int((model.eval()(xs[:200]).argmax(1) == ys[:200]).sum()) / 200
    return ours, plain


def bad_inputs() -> dict[str, str]:
    """The errors two unsuitable training inputs give under torchrun (every rank must raise the same)."""
    x_train, y_train, x_test, y_test = digits_tensors()
    recipe = {"steps": [{"finetune": {"method": "sgd", "steps": 1}}], "evaluate": []}
    errors = {}
    cases = {
        "odd_batch": DataLoader(TensorDataset(x_train, y_train), batch_size=63),
        "list": [(x_train[:64], y_train[:64])],
    }
    for key, data in cases.items():
        try:
            torchslim.Engine().run(MLP((64, 32, 10)), recipe, train_data=data)
            errors[key] = "no error"
        except torchslim.StepError as exc:
            errors[key] = f"{type(exc.__cause__).__name__}: {exc}"
    return errors


def sync_checks() -> dict:
    """sync_model on models that differ between ranks: in value (fixed) and in structure (refused)."""
    torch.manual_seed(100 + distributed.rank())  # a different random initialisation on every rank
    model = torch.nn.Linear(4, 3)
    copied = distributed.sync_model(model, "values", warn=False)
    fingerprint = distributed.check_identical(model, "after sync")
    shaped = torch.nn.Linear(4, 3 + distributed.rank())
    try:
        distributed.sync_model(shaped, "structure")
        refused = "no error"
    except torchslim.ModelError as exc:
        refused = str(exc)
    return {"copied": copied, "fingerprint": fingerprint, "refused": refused}


def user_sampler() -> dict:
    """A loader the user already shards with a DistributedSampler: kept, its batch_size is per process."""
    from torch.utils.data.distributed import DistributedSampler

    x_train, y_train, _, _ = digits_tensors()
    data = TensorDataset(x_train, y_train)
    loader = DataLoader(data, batch_size=16, sampler=DistributedSampler(data, shuffle=True, seed=SEED))
    torch.manual_seed(SEED)
    recipe = {"steps": [{"finetune": {"method": "sgd", "steps": 5}}], "evaluate": []}
    result = torchslim.Engine().run(MLP((64, 32, 10)), recipe, train_data=loader)
    return {"info": result.steps[0].info, "fingerprint": distributed.fingerprint(result.model)}


def distill(out: Path) -> dict:
    """The contrib ``distill`` method (a subclass of ``sgd``) under DDP, when that package is installed."""
    engine = torchslim.Engine()
    if "distill" not in engine.methods("finetune"):
        return {"installed": False}
    train, test, train_set = loaders()
    recipe = {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5}},
                        {"finetune": {"method": "distill", "steps": 6, "lr": 0.05, "features": ["net.0"]}}],
              "evaluate": ["accuracy"]}
    result = engine.run(build("mlp"), recipe, train_data=train, eval_data=test,
                        example_inputs=(train_set.tensors[0][:2],), seed=SEED)
    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{distributed.rank()}-distill.safetensors"))
    return {"installed": True, "info": result.steps[-1].info}


def run_models(out: Path, names: tuple[str, ...] = ("mlp", "cnn")) -> dict:
    """Everything one rank reports (also the single-process reference when not under torchrun)."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    report.update({name: run_model(name, out) for name in names})
    report["distill"] = distill(out)
    return report


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    report = run_models(out)
    report["errors"] = bad_inputs()
    report["sync"] = sync_checks()
    report["user_sampler"] = user_sampler()
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
