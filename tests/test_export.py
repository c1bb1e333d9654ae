"""Export to ONNX (checked against ONNX Runtime) and TorchScript, masks baked in on a copy."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim import masks, zoo
from torchslim.plugins.svd import modules as lowrank
from torchslim.export import ExportError, export_onnx, export_torchscript

X = torch.randn(4, 1, 8, 8)


def compressed_digits() -> nn.Module:
    """A DigitsCNN with 90% of fc1 masked and conv3 replaced by a low-rank factor module."""
    torch.manual_seed(0)
    model = zoo.DigitsCNN()
    model.conv3 = lowrank.ChannelLowRankConv(64, 64, 3, rank=8, padding=1)
    w = model.fc1.weight.detach()
    masks.apply_mask(model.fc1, "weight", w.abs() > w.abs().flatten().kthvalue(int(0.9 * w.numel())).values)
    return model.eval()


def test_onnx_export_matches_pytorch_in_onnxruntime_and_bakes_masks_in(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = compressed_digits()
    path = export_onnx(model, (X,), tmp_path / "out" / "model.onnx")
    assert path == tmp_path / "out" / "model.onnx" and path.is_file()
    assert parametrize.is_parametrized(model.fc1, "weight")  # the caller's model keeps its masks

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input0": X.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), model(X).detach(), rtol=1e-4, atol=1e-5)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    fc1 = next(v for v in weights.values() if v.shape == (128, 1024))
    assert (fc1 == 0).mean() > 0.899  # the 90% masked entries are zeros in the file


class Noisy(nn.Module):
    """Its output is random, so no export can reproduce it: the check must notice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_onnx_check_rejects_an_export_that_computes_something_else(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ExportError, match="differs from PyTorch's by up to"):
        export_onnx(Noisy(), (X,), tmp_path / "noisy.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_onnx_without_the_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail as if not installed
    with pytest.raises(ExportError, match=r"pip install torchslim\[onnx\]") as info:
        export_onnx(compressed_digits(), (X,), tmp_path / "model.onnx")
    assert isinstance(info.value, torchslim.TorchslimError)


def test_torchscript_export_runs_without_torchslim_and_matches(tmp_path):
    model = compressed_digits()
    path = export_torchscript(model, X, tmp_path / "model.pt")
    traced = torch.jit.load(str(path))
    assert not any("Mask" in type(m).__name__ for m in traced.modules())
    assert torch.equal(traced(X), model(X))
    assert parametrize.is_parametrized(model.fc1, "weight")


def test_frozen_torchscript_folds_batch_norms_and_matches(tmp_path):
    torch.manual_seed(0)
    model = zoo.resnet18(classes=10).eval()
    model.layer1[0].conv1 = lowrank.ChannelLowRankConv(64, 64, 3, rank=16, padding=1, bias=False)
    x = torch.randn(2, 3, 32, 32)
    path = export_torchscript(model, x, tmp_path / "frozen.pt", freeze=True)
    frozen = torch.jit.load(str(path))
    graph = str(frozen.graph)
    assert "aten::_convolution" in graph and "batch_norm" not in graph   # folded into the convs, ready to ship
    torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())   # the caller's model untouched


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_check_rejects_a_trace_that_computes_something_else(tmp_path):
    with pytest.raises(ExportError, match="traced TorchScript module"):
        export_torchscript(Noisy(), X, tmp_path / "noisy.pt")
    assert list(tmp_path.iterdir()) == []
