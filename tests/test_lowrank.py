"""Low-rank factor modules: exact at full rank for every layer geometry, and plain nn.Modules."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from torch import nn

from torchslim.plugins.svd.eligibility import applicable_forms
from torchslim.plugins.svd.spectra import compute_spectrum, factorize, weight_matrix
from torchslim.plugins.svd.modules import MODULE_KINDS, ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d

LAYERS = {
    "linear": lambda: nn.Linear(12, 7),
    "linear-tall": lambda: nn.Linear(5, 12),
    "linear-nobias": lambda: nn.Linear(9, 6, bias=False),
    "conv": lambda: nn.Conv2d(6, 8, 3, padding=1),
    "conv-stride-rect": lambda: nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2)),
    "conv-dilation": lambda: nn.Conv2d(4, 6, 3, dilation=2, padding=2, bias=False),
    "conv-groups": lambda: nn.Conv2d(6, 8, 3, groups=2, padding=1),
    "conv-same-even": lambda: nn.Conv2d(4, 6, (2, 4), padding="same"),
    "conv-valid": lambda: nn.Conv2d(4, 6, 3, padding="valid"),
    "conv-reflect": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    "conv-replicate-groups": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="replicate"),
    "conv-circular-same": lambda: nn.Conv2d(4, 6, (3, 2), padding="same", padding_mode="circular"),
    "conv-1x1": lambda: nn.Conv2d(8, 24, 1),
    "conv1d": lambda: nn.Conv1d(6, 9, 3, stride=2, padding=1, groups=3),
    "conv1d-same-replicate": lambda: nn.Conv1d(4, 8, 4, padding="same", padding_mode="replicate"),
}


def _input(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(2, 3, layer.in_features)
    if isinstance(layer, nn.Conv1d):
        return torch.randn(2, layer.in_channels, 11)
    return torch.randn(2, layer.in_channels, 9, 10)


def _cases():
    for name, build in LAYERS.items():
        kinds, _ = applicable_forms(build())
        for kind in kinds:
            yield pytest.param(build, kind, id=f"{name}-{kind}")


@pytest.mark.parametrize("build,kind", list(_cases()))
def test_full_rank_factors_equal_the_layer(build, kind):
    torch.manual_seed(0)
    layer = build()
    x = _input(layer)
    spectrum = compute_spectrum(weight_matrix(layer, kind), kind)
    module = factorize(layer, spectrum, spectrum.full_rank)
    assert isinstance(module, tuple(MODULE_KINDS))
    assert all(type(child) in (nn.Linear, nn.Conv1d, nn.Conv2d) for child in module.children())
    torch.testing.assert_close(module(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build,kind", list(_cases()))
def test_spec_round_trip_rebuilds_the_same_module(build, kind):
    torch.manual_seed(0)
    layer = build()
    spectrum = compute_spectrum(weight_matrix(layer, kind), kind)
    module = factorize(layer, spectrum, max(1, spectrum.full_rank // 2))
    spec = json.loads(json.dumps(module.torchslim_spec()))
    rebuilt = type(module).from_torchslim_spec(spec)
    rebuilt.load_state_dict(module.state_dict())
    x = _input(layer)
    torch.testing.assert_close(rebuilt(x), module(x))


def test_truncation_error_shrinks_with_rank():
    torch.manual_seed(0)
    layer = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 8, 8)
    spectrum = compute_spectrum(weight_matrix(layer, "weight"), "weight")
    errors = [float((factorize(layer, spectrum, r)(x) - layer(x)).norm()) for r in (2, 6, 12, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 * errors[0]


def test_spatial_factors_have_vertical_then_horizontal_kernels():
    layer = nn.Conv2d(4, 6, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(1, 2))
    module = SpatialLowRankConv2d.like(layer, 3)
    assert (module.first.kernel_size, module.first.stride, module.first.padding) == ((3, 1), (2, 1), (1, 0))
    assert (module.second.kernel_size, module.second.stride, module.second.padding) == ((1, 5), (1, 3), (0, 2))
    assert module.first.dilation == (1, 1) and module.second.dilation == (1, 2)
    assert module.first.out_channels == 3 and module.second.bias is not None and module.first.bias is None


def test_module_kinds_and_bad_rank():
    assert MODULE_KINDS == [LowRankLinear, ChannelLowRankConv, SpatialLowRankConv2d]
    with pytest.raises(ValueError, match="rank=0"):
        LowRankLinear(4, 4, rank=0)
    conv = ChannelLowRankConv(4, 8, 3, rank=2, groups=2, dims=1)
    assert conv.first.out_channels == 4 and isinstance(conv.first, nn.Conv1d)


def _decomposed_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    for index, kind in ((0, "weight"), (2, "spatial"), (5, "linear")):
        spectrum = compute_spectrum(weight_matrix(net[index], kind), kind)
        net[index] = factorize(net[index], spectrum, max(1, spectrum.full_rank // 2))
    return net


def test_decomposed_model_traces_with_jit():
    net = _decomposed_net().eval()
    x = torch.randn(2, 3, 6, 6)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(x), net(x))


def test_decomposed_model_exports_to_onnx():
    onnx = pytest.importorskip("onnx")
    net = _decomposed_net().eval()
    x = torch.randn(2, 3, 6, 6)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"])
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert {"Conv", "Gemm"} <= ops or {"Conv", "MatMul"} <= ops
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), net(x).detach(), rtol=1e-4, atol=1e-5)


def test_decomposed_model_trains():
    net = _decomposed_net().train()
    torch.manual_seed(1)
    x, y = torch.randn(32, 3, 6, 6), torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in net.parameters())
