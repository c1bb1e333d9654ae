"""The ``perplexity`` evaluator and ``torchslim.text.token_batches`` on a tiny GPT-2 (random weights)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchslim
from torchslim.context import RunContext
from torchslim.plugins.perplexity import Perplexity
from torchslim.text import token_batches

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 50


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    words = "the a cat dog sat on mat ran far and then slept".split()
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def evaluate(model: nn.Module, data) -> dict[str, float]:
    return Perplexity().evaluate(model=model, context=RunContext(eval_data=data))


def hf_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids if labels is None else labels).loss)


def test_matches_transformers_own_shifted_loss(gpt2):
    ids = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    got = evaluate(gpt2, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    assert got["eval_nll"] == pytest.approx(hf_loss(gpt2, ids), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["eval_nll"]), rel=1e-9)


def test_padding_is_never_scored(gpt2):
    gen = torch.Generator().manual_seed(2)
    long, short = torch.randint(0, VOCAB, (1, 12), generator=gen), torch.randint(0, VOCAB, (1, 7), generator=gen)
    padded = torch.cat([short, torch.full((1, 5), 0)], dim=1)
    batch = {"input_ids": torch.cat([long, padded]),
             "attention_mask": torch.cat([torch.ones(1, 12), torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], 1)]).long()}
    together = evaluate(gpt2, [batch])
    # 11 + 6 predicted tokens: the mean over both rows alone, weighted by their token counts
    alone = (hf_loss(gpt2, long) * 11 + hf_loss(gpt2, short) * 6) / 17
    assert together["eval_nll"] == pytest.approx(alone, rel=1e-5)


def test_labels_minus_100_are_ignored(gpt2):
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :6] = -100  # score only the continuation, as a prompt/answer split does
    got = evaluate(gpt2, [{"input_ids": ids, "labels": labels}])
    assert got["eval_nll"] == pytest.approx(hf_loss(gpt2, ids, labels), rel=1e-5)
    assert got["eval_nll"] != pytest.approx(hf_loss(gpt2, ids), rel=1e-3)


class TinyLM(nn.Module):
    """A plain module returning logits (no Hugging Face)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def test_plain_module_with_tensor_batches_and_pairs():
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(ids)
    expected = float(nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))
    assert evaluate(model, [ids])["eval_nll"] == pytest.approx(expected, rel=1e-6)
    assert evaluate(model, [(ids, ids)])["eval_nll"] == pytest.approx(expected, rel=1e-6)


def test_wrong_outputs_and_ids_are_clear_errors(gpt2):
    class Pooled(nn.Module):
        def forward(self, ids):
            return torch.zeros(ids.shape[0], VOCAB)

    with pytest.raises(torchslim.DataError, match=r"next-token logits \[batch, sequence, vocabulary\]"):
        evaluate(Pooled(), [torch.zeros(2, 5, dtype=torch.long)])
    class Uniform(nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, VOCAB)

    with pytest.raises(torchslim.DataError, match="token id 99 is outside the model's vocabulary of 50"):
        evaluate(Uniform(), [torch.tensor([[1, 99, 2]])])
    assert evaluate(Uniform(), [torch.tensor([[1, 9, 2]])])["perplexity"] == pytest.approx(VOCAB)
    with pytest.raises(torchslim.DataError, match="no token to predict"):
        evaluate(gpt2, [{"input_ids": torch.tensor([[5]])}])


def test_engine_runs_it_by_name(gpt2, tokenizer):
    text = ["the cat sat on the mat and then slept", "a dog ran far"] * 4
    data = token_batches(text, tokenizer, seq_len=8, batch_size=2)
    result = torchslim.Engine().run(gpt2, {"steps": [], "evaluate": ["perplexity"]}, eval_data=data)
    assert result.baseline["perplexity"] == pytest.approx(evaluate(gpt2, data)["perplexity"], rel=1e-6)
    assert 1.0 < result.baseline["perplexity"] < 10 * VOCAB


def test_token_batches_pack_every_token_once(tokenizer):
    text = ["the cat sat on the mat", "a dog ran far and then slept", "the cat"]
    batches = token_batches(text, tokenizer, seq_len=5, batch_size=2)
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = [t for row in stream for t in row + [tokenizer.eos_token_id]]
    ids = torch.cat([b["input_ids"] for b in batches])
    mask = torch.cat([b["attention_mask"] for b in batches])
    assert ids.shape[1] == 5 and [b["input_ids"].shape[0] for b in batches] == [2, 2]
    assert ids[mask.bool()].tolist() == expected
    assert (ids[~mask.bool()] == tokenizer.pad_token_id).all()


def test_token_batches_one_text_per_row_and_plain_callables(tokenizer):
    batches = token_batches(["the cat sat", "a dog ran far and then slept on the mat"], tokenizer, seq_len=6,
                            batch_size=4, pack=False)
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    chars = token_batches(["abc", "de"], lambda t: [ord(c) - 97 for c in t], seq_len=3, batch_size=8)
    assert chars[0]["input_ids"].tolist() == [[0, 1, 2], [3, 4, 0]]
    assert chars[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"texts": "one text"}, "texts must be a list of strings"),
    ({"texts": ["ok", 3]}, r"texts\[1\] is int"),
    ({"seq_len": 1}, "seq_len=1 must be an integer >= 2"),
    ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
    ({"tokenizer": "gpt2"}, "tokenizer=str is not callable"),
    ({"texts": ["", ""]}, "gave no tokens"),
])
def test_token_batches_refuses_bad_arguments(tokenizer, kwargs, message):
    args = {"texts": ["the cat"], "tokenizer": tokenizer, "seq_len": 4, "batch_size": 2, **kwargs}
    with pytest.raises(torchslim.DataError, match=message):
        token_batches(**args)
