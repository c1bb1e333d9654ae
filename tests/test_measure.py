"""torchslim.measure: parameter, non-zero and MAC counts checked against hand counts; latency; shapes."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.measure import (
    count_macs,
    count_nonzeros,
    count_params,
    measure_latency,
    module_input_shapes,
    rnn_macs,
)
from torchslim.plugins.svd.modules import ChannelLowRankConv, LowRankLinear, SpatialLowRankConv2d
from torchslim.zoo import MLP, DigitsCNN


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run on one thread: on a small shared CI machine, OpenMP spin-waiting makes 2 threads ~20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _seeded(factory):
    torch.manual_seed(0)
    return factory()


def small_cnn() -> nn.Module:
    """A BatchNorm-free CNN: conv(pad) -> pool -> conv -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
    )


class DigitsLSTM(nn.Module):
    """Reads an 8x8 digit row by row (8 steps of 8 pixels) and classifies the last state."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 8, 8))
        return self.head(out[:, -1])


def packed(lengths: list[int], features: int) -> nn.utils.rnn.PackedSequence:
    seqs = [torch.randn(n, features) for n in lengths]
    return nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)


# Each case: (module factory, example inputs, hand-counted MACs with the arithmetic spelled out).
# docs/evaluators.md shows the same table; test_docs_table_matches keeps them in step.
HAND_COUNTS = {
    # Linear: tokens * in * out (bias adds are not MACs)
    "Linear(20, 30), x 4x20": (lambda: nn.Linear(20, 30), (torch.randn(4, 20),), 4 * 20 * 30),
    "Linear(20, 30, bias=False), x 2x5x20": (lambda: nn.Linear(20, 30, bias=False), (torch.randn(2, 5, 20),), 10 * 20 * 30),
    # Conv: N * Cout * prod(out spatial) * (Cin / groups) * prod(kernel)
    "Conv1d(4, 6, 3, stride=2, padding=1), x 2x4x16": (
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (torch.randn(2, 4, 16),), 2 * 6 * 8 * 4 * 3),
    "Conv2d(4, 8, 3, stride=2, padding=1, groups=2), x 1x4x9x9": (
        lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), (torch.randn(1, 4, 9, 9),), 8 * 5 * 5 * 2 * 9),
    "Conv2d(3, 6, 3, dilation=2), x 2x3x10x10": (
        lambda: nn.Conv2d(3, 6, 3, dilation=2), (torch.randn(2, 3, 10, 10),), 2 * 6 * 6 * 6 * 3 * 9),
    "Conv2d(8, 8, 3, padding=1, groups=8) depthwise, x 1x8x6x6": (
        lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (torch.randn(1, 8, 6, 6),), 8 * 6 * 6 * 1 * 9),
    "Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1), x 1x2x4x8x8": (
        lambda: nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1), (torch.randn(1, 2, 4, 8, 8),), 4 * (4 * 4 * 4) * 2 * 27),
    # ConvTranspose: N * Cin * prod(in spatial) * (Cout / groups) * prod(kernel)
    "ConvTranspose2d(4, 2, 3, stride=2), x 1x4x5x5": (
        lambda: nn.ConvTranspose2d(4, 2, 3, stride=2), (torch.randn(1, 4, 5, 5),), 4 * 25 * 2 * 9),
    "ConvTranspose1d(4, 6, 4, stride=2, groups=2), x 2x4x7": (
        lambda: nn.ConvTranspose1d(4, 6, 4, stride=2, groups=2), (torch.randn(2, 4, 7),), 2 * 4 * 7 * 3 * 4),
    # BN-free nets: the sum of their layers
    "CNN conv(1,4,3,p1)-pool-conv(4,8,3)-linear(32,10), x 2x1x8x8": (
        small_cnn, (torch.randn(2, 1, 8, 8),), 2 * 4 * 64 * 9 + 2 * 8 * 4 * 4 * 9 + 2 * 32 * 10),
    "MLP(64, 128, 64, 10), x 3x64": (MLP, (torch.randn(3, 64),), 3 * (64 * 128 + 128 * 64 + 64 * 10)),
    # Attention, d=16, 4 heads (head dim 4): projections + scores (L*S*d) + weighted sum (L*S*d)
    "MultiheadAttention(16, 4) self, B=2, L=5": (
        lambda: nn.MultiheadAttention(16, 4, batch_first=True), (torch.randn(2, 5, 16),) * 3,
        10 * 16 * 48 + 2 * 5 * 5 * 16 * 2 + 10 * 16 * 16),
    "MultiheadAttention(16, 4) cross, B=2, L=5, S=7": (
        lambda: nn.MultiheadAttention(16, 4, batch_first=True),
        (torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)),
        10 * 16 * 16 + 2 * 14 * 16 * 16 + 2 * 5 * 7 * 16 * 2 + 10 * 16 * 16),
    # + feed-forward 16 -> 32 -> 16
    "TransformerEncoderLayer(16, 4, 32), B=2, L=5": (
        lambda: nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), (torch.randn(2, 5, 16),),
        10 * 16 * 48 + 2 * 5 * 5 * 16 * 2 + 10 * 16 * 16 + 10 * 16 * 32 * 2),
    "TransformerEncoderLayer(16, 4, 32, norm_first), L=5, B=2 (seq first)": (
        lambda: nn.TransformerEncoderLayer(16, 4, 32, norm_first=True), (torch.randn(5, 2, 16),),
        10 * 16 * 48 + 2 * 5 * 5 * 16 * 2 + 10 * 16 * 16 + 10 * 16 * 32 * 2),
    # Recurrent: tokens * sum over layers, directions of gates * hidden * (in + hidden)
    "RNN(4, 8), x 5x2x4": (lambda: nn.RNN(4, 8), (torch.randn(5, 2, 4),), 10 * 1 * 8 * (4 + 8)),
    "GRU(4, 8, num_layers=2, batch_first), x 2x5x4": (
        lambda: nn.GRU(4, 8, num_layers=2, batch_first=True), (torch.randn(2, 5, 4),),
        10 * (3 * 8 * (4 + 8) + 3 * 8 * (8 + 8))),
    "LSTM(4, 8, num_layers=2, bidirectional, batch_first), x 2x5x4": (
        lambda: nn.LSTM(4, 8, num_layers=2, bidirectional=True, batch_first=True), (torch.randn(2, 5, 4),),
        10 * 2 * (4 * 8 * (4 + 8) + 4 * 8 * (16 + 8))),
    "LSTM(4, 8, proj_size=3), x 5x2x4": (
        lambda: nn.LSTM(4, 8, proj_size=3), (torch.randn(5, 2, 4),), 10 * (4 * 8 * (4 + 3) + 8 * 3)),
    "LSTM(4, 8) unbatched, x 5x4": (lambda: nn.LSTM(4, 8), (torch.randn(5, 4),), 5 * 4 * 8 * (4 + 8)),
    "LSTM(4, 8) packed, lengths 5 and 3": (lambda: nn.LSTM(4, 8), (packed([5, 3], 4),), 8 * 4 * 8 * (4 + 8)),
    "GRU(4, 8, bidirectional) packed, lengths 4, 2, 1": (
        lambda: nn.GRU(4, 8, bidirectional=True), (packed([4, 2, 1], 4),), 7 * 2 * 3 * 8 * (4 + 8)),
    "LSTMCell(4, 8), x 2x4": (lambda: nn.LSTMCell(4, 8), (torch.randn(2, 4),), 2 * 4 * 8 * (4 + 8)),
    "GRUCell(4, 8), x 2x4": (lambda: nn.GRUCell(4, 8), (torch.randn(2, 4),), 2 * 3 * 8 * (4 + 8)),
    "LSTM(8, 16) + Linear(16, 10) digits rows, x 2x1x8x8": (
        DigitsLSTM, (torch.randn(2, 1, 8, 8),), 2 * 8 * 4 * 16 * (8 + 16) + 2 * 16 * 10),
    # Low-rank factor modules: the sum of their two factors
    "LowRankLinear(20, 30, rank=4), x 4x20": (
        lambda: LowRankLinear(20, 30, rank=4), (torch.randn(4, 20),), 4 * 20 * 4 + 4 * 4 * 30),
    "ChannelLowRankConv(8, 16, 3, rank=4, padding=1), x 1x8x6x6": (
        lambda: ChannelLowRankConv(8, 16, 3, rank=4, padding=1), (torch.randn(1, 8, 6, 6),),
        4 * 36 * 8 * 9 + 16 * 36 * 4),
    "ChannelLowRankConv(8, 6, 3, rank=2, groups=2, dims=1), x 2x8x10": (
        lambda: ChannelLowRankConv(8, 6, 3, rank=2, groups=2, dims=1), (torch.randn(2, 8, 10),),
        2 * 4 * 8 * 4 * 3 + 2 * 6 * 8 * 2),
    "SpatialLowRankConv2d(4, 8, 3, rank=3, padding=1), x 1x4x6x6": (
        lambda: SpatialLowRankConv2d(4, 8, 3, rank=3, padding=1), (torch.randn(1, 4, 6, 6),),
        3 * 36 * 4 * 3 + 8 * 36 * 3 * 3),
    # Not MACs by convention: lookups, normalisation
    "Embedding(10, 3), 4 ids": (lambda: nn.Embedding(10, 3), (torch.tensor([1, 2, 3, 4]),), 0),
    "BatchNorm2d(3), x 1x3x4x4": (lambda: nn.BatchNorm2d(3), (torch.randn(1, 3, 4, 4),), 0),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("case", list(HAND_COUNTS))
def test_count_macs_matches_hand_count(case):
    factory, inputs, expected = HAND_COUNTS[case]
    assert count_macs(_seeded(factory), inputs) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("case", list(HAND_COUNTS))
def test_count_macs_matches_hand_count_on_cuda(case):
    # On CUDA recurrent modules run as cuDNN kernels and attention as fused SDPA kernels.
    factory, inputs, expected = HAND_COUNTS[case]
    assert count_macs(_seeded(factory).cuda(), inputs) == expected


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_transformer_macs_same_in_eval_fast_path_and_training(mode):
    # In eval mode under no_grad the layer takes PyTorch's fused fast path, which the counter cannot see.
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    layer.train(mode == "train")
    x = torch.randn(2, 5, 16)
    expected = HAND_COUNTS["TransformerEncoderLayer(16, 4, 32), B=2, L=5"][2]
    assert count_macs(layer, (x,)) == expected
    assert layer.training == (mode == "train")
    assert torch.backends.mha.get_fastpath_enabled()


def test_rnn_formula_is_what_weights_hold():
    # Per token, the MACs of a recurrent layer are exactly the sizes of its weight matrices.
    for rnn in (nn.LSTM(5, 7, num_layers=3, bidirectional=True), nn.GRU(5, 7, num_layers=2),
                nn.LSTM(5, 7, num_layers=2, proj_size=4, bidirectional=True), nn.RNN(5, 7, nonlinearity="relu")):
        weights = sum(p.numel() for name, p in rnn.named_parameters() if name.startswith("weight"))
        assert rnn_macs(rnn, tokens=3) == 3 * weights


@settings(max_examples=25, deadline=None)
@given(
    cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), groups=st.integers(1, 3), kernel=st.integers(1, 4),
    stride=st.integers(1, 3), dilation=st.integers(1, 2), padding=st.integers(0, 2), size=st.integers(6, 12),
    batch=st.integers(1, 2),
)
def test_conv2d_macs_match_formula(cin_g, cout_g, groups, kernel, stride, dilation, padding, size, batch):
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    assume(size + 2 * padding >= dilation * (kernel - 1) + 1)  # the kernel fits the padded input
    conv = nn.Conv2d(cin_g * groups, cout_g * groups, kernel, stride=stride, padding=padding,
                     dilation=dilation, groups=groups)
    expected = batch * cout_g * groups * out * out * cin_g * kernel * kernel
    assert count_macs(conv, torch.randn(batch, cin_g * groups, size, size)) == expected


def test_count_macs_leaves_model_untouched():
    model = _seeded(DigitsCNN)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (torch.randn(4, 1, 8, 8),))
    assert model.training and all(m.training for m in model.modules())
    # BatchNorm running statistics are not updated by the counting pass
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_count_macs_accepts_tensor_and_dict_inputs():
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, *, pixels: torch.Tensor) -> torch.Tensor:
            return self.fc(pixels)

    assert count_macs(Keyword(), {"pixels": torch.randn(3, 6)}) == 3 * 6 * 2
    assert count_macs(nn.Linear(6, 2), torch.randn(3, 6)) == 3 * 6 * 2


def test_bad_example_inputs_raise_data_error_naming_shapes():
    with pytest.raises(torchslim.DataError, match=r"example_inputs \(\(4, 3\) float32\)"):
        count_macs(nn.Linear(6, 2), (torch.randn(4, 3),))
    with pytest.raises(torchslim.DataError, match="must be a tensor"):
        count_macs(nn.Linear(6, 2), 3.0)


# ----------------------------------------------------------------------------- params / non-zeros
class Zeroed(nn.Module):
    """A mask parametrization (as pruning registers it)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class Factored(nn.Module):
    """A shape-changing parametrization: the weight is stored as two rank-1 factors."""

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v

    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w[:, :1].clone(), torch.ones(1, w.shape[1])


def test_count_params_plain_and_tied():
    model = _seeded(DigitsCNN)
    # conv1 + bn1 + conv2 + bn2 + conv3 + bn3 + fc1 + fc2, counted by hand
    by_hand = (32 * 9 + 32) + 64 + (64 * 32 * 9 + 64) + 128 + (64 * 64 * 9 + 64) + 128 + (1024 * 128 + 128) + 1290
    assert count_params(model) == by_hand == 188554
    shared = nn.Linear(4, 4)
    tied = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_params(tied) == 4 * 4 + 4


def test_count_params_parametrized_weight_counts_once_with_effective_shape():
    model = _seeded(lambda: nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)))
    before = count_params(model)
    parametrize.register_parametrization(model[0], "weight", Zeroed(torch.ones(5, 6)))
    assert count_params(model) == before == 6 * 5 + 5 + 5 * 3 + 3
    parametrize.register_parametrization(model[1], "weight", Factored())
    # stored as 3x1 + 1x5 = 8 values, but the forward pass uses a 3x5 weight
    assert model[1].weight.shape == (3, 5)
    assert count_params(model) == before


def test_count_nonzeros_applies_masks():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    mask = torch.rand(4, 8) > 0.5
    parametrize.register_parametrization(layer, "weight", Zeroed(mask))
    assert count_nonzeros(layer) == int(mask.sum()) + 4
    # the stored original is still dense; only the effective weight is sparse
    assert int(torch.count_nonzero(layer.parametrizations.weight.original)) == 32
    assert count_params(layer) == 36


def test_count_nonzeros_with_real_masks_module():
    masks = pytest.importorskip("torchslim.masks")
    model = _seeded(DigitsCNN)
    keep = torch.arange(model.fc1.weight.numel()).reshape(model.fc1.weight.shape) % 4 == 0
    masks.apply_mask(model.fc1, "weight", keep)
    zeros_elsewhere = sum(int((p == 0).sum()) for n, p in model.named_parameters() if "fc1" not in n or "bias" in n)
    assert count_nonzeros(model) == count_params(model) - zeros_elsewhere - int((~keep).sum())


# ----------------------------------------------------------------------------- latency
class Sleeper(nn.Module):
    """Sleeps a scripted time per call and records the thread count and mode it ran under."""

    def __init__(self, seconds: list[float]) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.seconds = seconds
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds[len(self.calls) % len(self.seconds)])
        self.calls.append((torch.get_num_threads(), torch.is_inference_mode_enabled(), self.training))
        return self.fc(x)


def test_measure_latency_is_median_after_warmup():
    # warm-up call 0.2 s (not timed), then 5 timed calls: one slow outlier, four 2 ms calls
    model = Sleeper([0.2, 0.06, 0.002, 0.002, 0.002, 0.002])
    ms = measure_latency(model, (torch.randn(1, 2),), runs=5, warmup=1)
    assert len(model.calls) == 6
    assert 2.0 <= ms < 20.0  # the median ignores the 60 ms outlier; a mean would be >= 13.6
    assert all(inference and not training for _, inference, training in model.calls)
    assert model.training  # restored


def test_measure_latency_sets_and_restores_threads():
    model = Sleeper([0.0])
    before = torch.get_num_threads()  # 1, set by the one_torch_thread fixture
    measure_latency(model, torch.randn(1, 2), runs=2, warmup=1, threads=before + 1)
    assert [threads for threads, _, _ in model.calls] == [before + 1] * 3
    assert torch.get_num_threads() == before


def test_measure_latency_rejects_bad_settings():
    with pytest.raises(ValueError, match="runs=0"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), runs=0)
    with pytest.raises(ValueError, match="threads=0"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), threads=0)


# ----------------------------------------------------------------------------- shapes
def test_module_input_shapes_of_digits_cnn():
    model = _seeded(DigitsCNN)
    shapes = module_input_shapes(model, (torch.randn(3, 1, 8, 8),))
    assert shapes[""] == (3, 1, 8, 8)
    assert shapes["conv1"] == (3, 1, 8, 8)
    assert shapes["conv2"] == (3, 32, 8, 8)
    assert shapes["pool"] == (3, 64, 8, 8)
    assert shapes["fc1"] == (3, 64 * 4 * 4)
    assert shapes["fc2"] == (3, 128)


def test_module_input_shapes_skips_parametrization_internals():
    layer = nn.Sequential(nn.Linear(4, 2))
    parametrize.register_parametrization(layer[0], "weight", Zeroed(torch.ones(2, 4)))
    assert module_input_shapes(layer, torch.randn(5, 4)) == {"": (5, 4), "0": (5, 4)}


def test_docstring_examples_run():
    import doctest

    import torchslim.measure

    assert doctest.testmod(torchslim.measure).failed == 0


def test_docs_table_matches_hand_counts():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluators.md").read_text()
    for case, (_, _, expected) in HAND_COUNTS.items():
        assert f"| {case} | {expected:,} |" in text, f"docs/evaluators.md lacks the row for {case}"
