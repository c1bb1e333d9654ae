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
from torchslim.data import digits_tensors
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
    "evaluate": ["accuracy", "nonzeros"],
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
    return DigitsCNN(width=16) if name == "cnn" else MLP((64, 64, 10))


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
    }


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


def run_models(out: Path, names: tuple[str, ...] = ("mlp", "cnn")) -> dict:
    """Everything one rank reports (also the single-process reference when not under torchrun)."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    report.update({name: run_model(name, out) for name in names})
    return report


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    report = run_models(out)
    report["errors"] = bad_inputs()
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
