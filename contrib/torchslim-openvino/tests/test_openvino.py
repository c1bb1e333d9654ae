"""The OpenVINO runtime plugin, installed with pip and found through the torchslim entry points."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim

pytest.importorskip("openvino")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 5)).eval()


@pytest.fixture(scope="module")
def loader():
    torch.manual_seed(1)
    x = torch.randn(64, 3, 12, 12)
    return DataLoader(TensorDataset(x, small_cnn()(x).argmax(1).detach()), batch_size=24)


def test_openvino_is_an_installed_runtime():
    engine = torchslim.Engine()
    assert "openvino" in engine.methods("deploy")
    assert torchslim.runtime.unavailable("openvino") is None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_artifact_runs_saves_and_loads(precision, loader, tmp_path):
    if precision == "int8":
        pytest.importorskip("nncf")
    engine = torchslim.Engine()
    recipe = {"steps": [{"deploy": {"method": "openvino", "precision": precision}}], "evaluate": ["accuracy", "size"]}
    example = next(iter(loader))[0][:4]
    result = engine.run(small_cnn(), recipe, train_data=loader, eval_data=loader, example_inputs=(example,))
    assert type(result.model).__name__ == "OpenVINOModule"
    x = torch.randn(7, 3, 12, 12)
    reference = small_cnn()(x).detach()
    error = float((result.model(x) - reference).norm() / reference.norm())
    assert error < (1e-4 if precision == "fp32" else 0.1)
    assert result.final["accuracy"] >= (1.0 if precision == "fp32" else 0.75)
    loaded = torchslim.load(torchslim.save(result, tmp_path / "ov"))
    torch.testing.assert_close(loaded(x), result.model(x))


def test_int8_quantizes_attention_models_with_the_transformer_scheme():
    pytest.importorskip("nncf")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)).eval()

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    def tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones(8, 16, dtype=torch.long)
        mask[::2, 10:] = 0
        return ids, mask

    model, x = Encoder().eval(), tokens(0)
    reference = model(*x).detach()
    errors = {}
    for scheme in ("auto", "default"):
        artifact = torchslim.runtime.deploy(model, x, "openvino", precision="int8", model_type=scheme,
                                            train_data=[(tokens(s), None) for s in range(1, 5)])
        errors[scheme] = float((artifact(*x) - reference).norm() / reference.norm())
    assert errors["auto"] < 0.05
    assert errors["auto"] < 0.75 * errors["default"]
