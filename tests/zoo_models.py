"""A zoo of small, unusual models for robustness tests: each factory gives a model, inputs and data.

The models are written here on purpose (not taken from torchslim.zoo): they cover what compression
tools trip over on models their authors never tried: BatchNorm, residual adds, depthwise and grouped
convs, Conv1d, recurrent layers, nn.TransformerEncoder and hand-written attention, tied weights,
functional and in-place ops, integer/bool buffers and non-float parameters.

Every factory is deterministic (seeded) and returns a :class:`ZooCase`::

    case = ZOO["residual"]()
    result = torchslim.Engine().run(case.model, recipe, train_data=case.loader(), eval_data=case.loader(),
                                    example_inputs=case.example_inputs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

SAMPLES = 32
BATCH = 16
CLASSES = 4
VOCAB = 16
SEQ = 8


@dataclass
class ZooCase:
    """One zoo model with example inputs and a tiny labelled dataset (inputs, targets)."""

    name: str
    model: nn.Module
    example_inputs: tuple
    inputs: torch.Tensor
    targets: torch.Tensor

    def loader(self, batch_size: int = BATCH) -> DataLoader:
        """A DataLoader over the dataset; shuffled with a seeded generator (reproducible runs)."""
        gen = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(self.inputs, self.targets), batch_size=batch_size, shuffle=True,
                          generator=gen)

    def build(self) -> nn.Module:
        """A fresh model of the same architecture (other weights), as a ``load`` base model."""
        return ZOO[self.name]().model


# ----------------------------------------------------------------------------------------- models
class PlainMLP(nn.Module):
    """Linear/ReLU stack with a LayerNorm and a Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.LayerNorm(32), nn.Dropout(0.1),
                                  nn.Linear(32, 24), nn.GELU(), nn.Linear(24, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BNConvNet(nn.Module):
    """Conv/BatchNorm/ReLU stack with pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with BN, plus an identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResidualNet(nn.Module):
    """A tiny ResNet: stem, an identity block, a strided projection block, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = ResidualBlock(16, 16, 1)
        self.block2 = ResidualBlock(16, 32, 2)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseNet(nn.Module):
    """MobileNet-style: depthwise 3x3 + pointwise 1x1, then a grouped conv (groups=4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn_dw = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.bn_g = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        x = F.relu6(self.bn_dw(self.dw(x)))
        x = F.relu6(self.pw(x))
        x = F.relu6(self.bn_g(self.grouped(x)))
        return self.head(x.mean(dim=(2, 3)))


class AudioNet(nn.Module):
    """Conv1d over a raw waveform (strided front end, BatchNorm1d), global pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Conv1d(1, 16, 9, stride=4, padding=4)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.conv3 = nn.Conv1d(32, 32, 3, padding=1, dilation=1)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.front(x)))
        x = F.max_pool1d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.conv3(x))
        return self.head(x.mean(dim=2))


class RNNTagger(nn.Module):
    """Sequence tagger: Embedding, bidirectional LSTM, GRU, per-token linear; logits (N, classes, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(32, 16, batch_first=True)
        self.out = nn.Linear(16, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.embed(tokens))
        x, _ = self.gru(x)
        return self.out(x).transpose(1, 2)


class TransformerClassifier(nn.Module):
    """Token classifier on nn.TransformerEncoder (2 layers, batch_first, learned positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.pos = nn.Parameter(torch.randn(1, SEQ, 32) * 0.02)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]])
        return self.head(x.mean(dim=1))


class SelfAttention(nn.Module):
    """Hand-written multi-head self-attention: separate q/k/v Linears, softmax(QK^T/sqrt(d))V."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        split = lambda y: y.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class AttentionNet(nn.Module):
    """Pre-norm block of the hand-written attention plus an MLP, over Linear-projected features."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.norm1 = nn.LayerNorm(32)
        self.attn = SelfAttention(32, 4)
        self.norm2 = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class TiedNet(nn.Module):
    """Weights shared two ways: the embedding is the output head's weight, and one Linear runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 24)
        self.shared = nn.Linear(24, 24)
        self.decoder = nn.Linear(24, VOCAB, bias=False)
        self.decoder.weight = self.embed.weight  # tied, as in language models

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(dim=1)
        x = torch.tanh(self.shared(x))
        x = torch.tanh(self.shared(x))  # the same module (and weight) applied twice
        return self.decoder(x)


class FunctionalNet(nn.Module):
    """Functional ops on raw Parameters (F.conv2d, F.linear) mixed with modules, and in-place ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.conv_b = nn.Parameter(torch.zeros(8))
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc_w = nn.Parameter(torch.randn(16, 8) * 0.2)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.conv_w, self.conv_b, padding=1)
        x.relu_()
        y = self.conv(x)
        y += x  # in-place residual add
        y = F.relu(y, inplace=True)
        x = torch.flatten(F.adaptive_max_pool2d(y, 1), 1)
        x = F.linear(x, self.fc_w)
        x.mul_(0.5).clamp_(min=-5, max=5)
        return self.fc(x)


class BufferNet(nn.Module):
    """Buffers of every kind: int64 counter, bool feature mask, float64 statistics, int32 Parameter.

    The int and bool tensors take part in the forward pass, so a method that corrupts or drops them
    changes the outputs. ``offsets`` is an integer ``nn.Parameter`` (requires_grad=False, as torch
    demands for non-float parameters).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, CLASSES)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        keep = torch.ones(24, dtype=torch.bool)
        keep[::5] = False
        self.register_buffer("keep", keep)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 24, dtype=torch.float64))
        self.offsets = nn.Parameter(torch.arange(CLASSES, dtype=torch.int32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        h = F.relu(self.fc1(x)) * self.scale.to(x.dtype)
        h = h.masked_fill(~self.keep, 0.0)
        return self.fc2(h) + 0.01 * self.offsets.to(x.dtype)


# ----------------------------------------------------------------------------------------- factories
def _case(name: str, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> ZooCase:
    model.eval()
    return ZooCase(name=name, model=model, example_inputs=(inputs[:2].clone(),), inputs=inputs, targets=targets)


def _labels_from(inputs: torch.Tensor, classes: int = CLASSES) -> torch.Tensor:
    """Learnable labels: a fixed random projection of the inputs, bucketed into ``classes``."""
    flat = inputs.reshape(inputs.shape[0], -1).float()
    gen = torch.Generator().manual_seed(123)
    direction = torch.randn(flat.shape[1], classes, generator=gen)
    return (flat @ direction).argmax(dim=1)


def _images(channels: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randn(SAMPLES, channels, size, size, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (SAMPLES, SEQ), generator=torch.Generator().manual_seed(2))


def mlp() -> ZooCase:
    torch.manual_seed(0)
    x = torch.randn(SAMPLES, 12, generator=torch.Generator().manual_seed(3))
    return _case("mlp", PlainMLP(), x, _labels_from(x))


def bn_cnn() -> ZooCase:
    torch.manual_seed(0)
    x = _images()
    return _case("bn_cnn", BNConvNet(), x, _labels_from(x))


def residual() -> ZooCase:
    torch.manual_seed(0)
    x = _images()
    return _case("residual", ResidualNet(), x, _labels_from(x))


def depthwise() -> ZooCase:
    torch.manual_seed(0)
    x = _images()
    return _case("depthwise", DepthwiseNet(), x, _labels_from(x))


def audio() -> ZooCase:
    torch.manual_seed(0)
    x = torch.randn(SAMPLES, 1, 64, generator=torch.Generator().manual_seed(4))
    return _case("audio", AudioNet(), x, _labels_from(x))


def rnn_tagger() -> ZooCase:
    torch.manual_seed(0)
    tokens = _tokens()
    return _case("rnn_tagger", RNNTagger(), tokens, tokens % CLASSES)  # per-token tags (N, T)


def transformer() -> ZooCase:
    torch.manual_seed(0)
    tokens = _tokens()
    return _case("transformer", TransformerClassifier(), tokens, tokens[:, 0] % CLASSES)


def attention() -> ZooCase:
    torch.manual_seed(0)
    x = torch.randn(SAMPLES, SEQ, 6, generator=torch.Generator().manual_seed(5))
    return _case("attention", AttentionNet(), x, _labels_from(x))


def tied() -> ZooCase:
    torch.manual_seed(0)
    tokens = _tokens()
    return _case("tied", TiedNet(), tokens, tokens[:, -1])  # predict the last token (VOCAB classes)


def functional() -> ZooCase:
    torch.manual_seed(0)
    x = _images()
    return _case("functional", FunctionalNet(), x, _labels_from(x))


def buffers() -> ZooCase:
    torch.manual_seed(0)
    x = torch.randn(SAMPLES, 12, generator=torch.Generator().manual_seed(6))
    return _case("buffers", BufferNet(), x, _labels_from(x))


ZOO: dict[str, Callable[[], ZooCase]] = {
    "mlp": mlp, "bn_cnn": bn_cnn, "residual": residual, "depthwise": depthwise, "audio": audio,
    "rnn_tagger": rnn_tagger, "transformer": transformer, "attention": attention, "tied": tied,
    "functional": functional, "buffers": buffers,
}
