"""Hugging Face transformers in and out: keyword inputs, every method on BERT/GPT-2/ViT/Llama-style models
built from small configs (random weights), structured pruning of heads and MLP widths, and the way back
through ``from_pretrained``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchslim
from torchslim.export import export_onnx

T = pytest.importorskip("transformers")

VOCAB, HIDDEN = 100, 32
ROOT = Path(__file__).resolve().parents[1]


def bert_cls():
    config = T.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return T.BertForSequenceClassification(config).eval()


def family(name: str):
    """``(model, example_inputs, plain-from_pretrained class)`` of one family, seeded."""
    torch.manual_seed(0)
    ids = {"input_ids": torch.randint(0, VOCAB, (2, 8))}
    if name == "bert":
        return bert_cls(), {**ids, "attention_mask": torch.ones(2, 8, dtype=torch.long)}, T.AutoModelForSequenceClassification
    if name == "gpt2":
        config = T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=32)
        return T.GPT2LMHeadModel(config).eval(), ids, T.AutoModelForCausalLM
    if name == "vit":
        config = T.ViTConfig(image_size=16, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64, num_labels=3)
        return T.ViTForImageClassification(config).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)}, \
            T.AutoModelForImageClassification
    config = T.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    return T.LlamaForCausalLM(config).eval(), ids, T.AutoModelForCausalLM


def first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.logits


def run(model, inputs):
    with torch.no_grad():
        return first(model(**inputs))


def test_dict_batches_and_batch_encoding_in_every_method_and_evaluator():
    model, _, _ = family("bert")
    batches = [{"input_ids": torch.randint(0, VOCAB, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
                "labels": torch.randint(0, 3, (4,))} for _ in range(2)]
    example = T.BatchEncoding({k: v for k, v in batches[0].items() if k != "labels"})
    steps = [{"compress": {"method": "magnitude", "sparsity": 0.5}},
             {"accelerate": {"method": "svd", "mac_ratio": 0.7, "measure_latency": False}},
             {"accelerate": {"method": "channel", "ratio": 0.5}},
             {"finetune": {"method": "sgd", "epochs": 1}}]
    evaluate = ["accuracy", "macs", "latency", "params", "size"]
    for step, example_inputs in zip(steps, [example, None, example, None]):
        recipe = {"steps": [step], "evaluate": evaluate, "evaluation": {"latency_runs": 2, "latency_warmup": 0}}
        result = torchslim.Engine().run(model, recipe, train_data=batches, eval_data=batches,
                                        example_inputs=example_inputs)
        final = result.final
        assert {"accuracy", "macs", "latency_ms", "params", "size_bytes"} <= set(result.baseline)
        if "accelerate" in step:
            assert final["macs"] < result.baseline["macs"], step


def test_evaluation_output_names_the_scored_tensor():
    model, inputs, _ = family("bert")
    data = [({**inputs}, torch.tensor([0, 1]))]
    good = torchslim.Engine().run(model, {"steps": [], "evaluate": ["accuracy"], "evaluation": {"output": "logits"}},
                                  eval_data=data)
    assert 0.0 <= good.baseline["accuracy"] <= 1.0
    with pytest.raises(torchslim.DataError, match="evaluation.output='pooler_output' is not in the model's output"):
        torchslim.Engine().run(model, {"steps": [], "evaluate": ["accuracy"],
                                       "evaluation": {"output": "pooler_output"}}, eval_data=data)


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "llama"])
def test_channel_prunes_heads_and_mlp_and_reloads_identically(name, tmp_path):
    model, inputs, auto = family(name)
    params = sum(p.numel() for p in model.parameters())
    result = torchslim.Engine().run(model, {"steps": [{"accelerate": {"method": "channel", "ratio": 0.5}}]},
                                    example_inputs=inputs)
    pruned = result.model
    assert result.steps[0].info["engine"] == "transformer-blocks"
    assert sum(p.numel() for p in pruned.parameters()) < 0.75 * params
    assert run(pruned, inputs).shape == run(model, inputs).shape
    blocks = torchslim.hf.find_blocks(pruned)
    assert len(blocks) == 2
    heads = torchslim.hf.blocks.head_counts(pruned, blocks[0])
    assert heads == ((2, 1) if name == "llama" else (2, 2))  # GQA: one whole key/value group kept, group size 2
    saved = torchslim.hf.save_pretrained(result, tmp_path)
    # q/k/v/o layouts (Llama, ViT) say head counts and widths in the config; BERT/GPT-2 head sizes cannot
    assert saved.plain == (name in ("vit", "llama"))
    back = auto.from_pretrained(tmp_path) if saved.plain else torchslim.hf.from_pretrained(tmp_path)
    assert torch.equal(run(back, inputs), run(pruned, inputs))
    if not saved.plain:
        with pytest.raises(OSError):
            auto.from_pretrained(tmp_path)  # never a silently re-initialised model


def test_bert_and_gpt2_mlp_widths_go_back_to_plain_from_pretrained(tmp_path):
    for name in ("bert", "gpt2"):
        model, inputs, auto = family(name)
        result = torchslim.Engine().run(
            model, {"steps": [{"accelerate": {"method": "channel", "ratio": 0.5, "head_ratio": 0.0}}]},
            example_inputs=inputs)
        saved = torchslim.hf.save_pretrained(result, tmp_path / name, require_plain=True)
        width = saved.directory.joinpath("config.json").read_text()
        assert ('"n_inner": 64' if name == "gpt2" else '"intermediate_size": 32') in width
        assert torch.equal(run(auto.from_pretrained(tmp_path / name), inputs), run(result.model, inputs))


def test_magnitude_prunes_gpt2_conv1d_keeps_the_tie_and_reloads(tmp_path):
    model, inputs, auto = family("gpt2")
    result = torchslim.Engine().run(model, {"steps": [{"compress": {"method": "magnitude", "sparsity": 0.5}}]},
                                    example_inputs=inputs)
    pruned = result.model
    c_fc = pruned.transformer.h[0].mlp.c_fc.weight
    assert abs(float((c_fc == 0).float().mean()) - 0.5) < 0.05
    assert pruned.lm_head.weight is pruned.transformer.wte.weight and bool((pruned.lm_head.weight != 0).all())
    assert torchslim.hf.save_pretrained(result, tmp_path).plain
    back = auto.from_pretrained(tmp_path)
    assert torch.equal(run(back, inputs), run(pruned, inputs))


def test_svd_factorizes_conv1d_and_leaves_the_tied_head(tmp_path):
    model, inputs, _ = family("gpt2")
    result = torchslim.Engine().run(
        model, {"steps": [{"accelerate": {"method": "svd", "mac_ratio": 0.7, "measure_latency": False}}],
                "evaluate": ["params", "macs"]}, example_inputs=inputs)
    pruned = result.model
    assert type(pruned.transformer.h[0].mlp.c_fc).__name__ == "LowRankLinear"
    assert pruned.lm_head.weight is pruned.transformer.wte.weight
    assert result.final["params"] < result.baseline["params"]  # the tie kept: no second vocabulary matrix
    assert "tied to transformer.wte.weight" in dict(result.steps[0].skipped)["lm_head"]
    saved = torchslim.hf.save_pretrained(result, tmp_path)
    assert not saved.plain and "not built by the config" in saved.reasons[0]
    assert torch.equal(run(torchslim.hf.from_pretrained(tmp_path), inputs), run(pruned, inputs))


def test_unknown_attention_layout_is_an_error_naming_the_module():
    class Odd(torch.nn.Module):
        pass

    Odd.__module__ = "transformers.models.odd"
    Odd.__name__ = "OddAttention"
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    odd = Odd()
    odd.proj = torch.nn.Linear(8, 8)
    model.add_module("attn", odd)
    from torchslim.plugins.channel.transformers import transformer_blocks

    with pytest.raises(torchslim.ModelError, match="OddAttention 'attn' is a transformers attention module"):
        transformer_blocks(model, "channel")


def test_onnx_export_takes_keyword_inputs(tmp_path):
    model, inputs, _ = family("bert")
    path = export_onnx(model, inputs, tmp_path / "bert.onnx")
    assert path.stat().st_size > 0


@pytest.mark.slow
def test_cli_runs_a_local_hf_directory(tmp_path):
    model, _, auto = family("gpt2")
    model.save_pretrained(tmp_path / "gpt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - accelerate: {method: channel, ratio: 0.5, head_ratio: 0.0}\nevaluate: [macs]\n")
    done = subprocess.run([sys.executable, "-m", "torchslim.cli", "run", str(recipe), "--model",
                           f"hf:{tmp_path / 'gpt'}", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    back = auto.from_pretrained(tmp_path / "out" / "hf")
    assert back.config.n_inner == 64
    missing = subprocess.run([sys.executable, "-m", "torchslim.cli", "run", str(recipe), "--model",
                              f"hf:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "o2")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a local directory with a config.json" in missing.stderr


def test_svd_on_vit_leaves_the_patch_conv_its_model_reads():
    model, inputs, _ = family("vit")
    result = torchslim.Engine().run(
        model, {"steps": [{"accelerate": {"method": "svd", "mac_ratio": 0.7, "measure_latency": False}}]},
        example_inputs=inputs)
    reason = dict(result.steps[0].skipped)["vit.embeddings.patch_embeddings.projection"]
    assert "ViTModel.forward reads embeddings.patch_embeddings.projection.weight" in reason


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    out = tmp_path / "hf.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "hf.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["family"] for r in rows} >= {"BERT", "GPT-2", "ViT", "Llama (GQA)"}
    assert all(r["status"] == "ran" and r["identical"] for r in rows), [r for r in rows if not r.get("identical")]


def test_svd_lists_multihead_attention_in_proj_as_skipped():
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    result = torchslim.Engine().run(
        model, {"steps": [{"accelerate": {"method": "svd", "rank_ratio": 0.5, "measure_latency": False}}]},
        example_inputs=(torch.randn(2, 8, 32),))
    skipped = dict(result.steps[0].skipped)
    assert "packed q/k/v in_proj_weight" in skipped["self_attn.in_proj_weight"]


def test_mac_ratio_and_per_block_widths_through_the_torchslim_loader(tmp_path):
    model, inputs, auto = family("llama")
    budget = torchslim.Engine().run(
        model, {"steps": [{"accelerate": {"method": "channel", "mac_ratio": 0.8, "head_ratio": 0.0}}],
                "evaluate": ["macs"]}, example_inputs=inputs)
    assert budget.final["macs"] <= 0.8 * budget.baseline["macs"]
    assert budget.model.config.intermediate_size < 64
    per_block = torchslim.Engine().run(
        model, {"steps": [{"accelerate": {"method": "channel", "ratio": 0.0,
                                          "overrides": {"model.layers.0": 0.5}}}]}, example_inputs=inputs)
    widths = [layer.mlp.up_proj.out_features for layer in per_block.model.model.layers]
    assert widths == [32, 64]
    saved = torchslim.hf.save_pretrained(per_block, tmp_path)
    assert not saved.plain  # one intermediate_size per config cannot say two widths
    with pytest.raises(torchslim.ModelError, match="the config cannot describe this model"):
        torchslim.hf.save_pretrained(per_block, tmp_path / "strict", require_plain=True)
    assert torch.equal(run(torchslim.hf.from_pretrained(tmp_path), inputs), run(per_block.model, inputs))
