"""The deploy stage: real runtime sessions, artifacts measured and saved as they ship."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchslim
from torchslim.latency_table import pair_key
from torchslim.plugins.runtimes import InductorModule, OnnxRuntimeModule, TorchScriptModule
from torchslim.runtime import deploy


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    ).eval()


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    x = torch.randn(96, 3, 12, 12)
    y = small_cnn()(x).argmax(1).detach()  # labels the model gets right: accuracy 1.0 to compare against
    loader = DataLoader(TensorDataset(x, y), batch_size=20)  # a last batch of 16: the artifacts take any batch
    return loader, x[:8]


def run(engine, deploy_step, data, evaluate=("accuracy", "size", "latency", "params", "macs")):
    loader, example = data
    recipe = {"steps": [{"deploy": deploy_step}], "evaluate": list(evaluate),
              "evaluation": {"latency_runs": 3, "latency_warmup": 1}}
    return engine.run(small_cnn(), recipe, train_data=loader, eval_data=loader, example_inputs=(example,))


def test_onnxruntime_fp32_step_gives_a_callable_artifact_that_matches_eager(engine, data):
    result = run(engine, {"method": "onnxruntime"}, data)
    assert isinstance(result.model, OnnxRuntimeModule)
    x = torch.randn(3, 3, 12, 12)
    torch.testing.assert_close(result.model(x), small_cnn()(x), rtol=1e-4, atol=1e-5)
    final = result.final
    assert final["accuracy"] == 1.0 and result.baseline["accuracy"] == 1.0
    # counts carried from the model it was built from; size is the artifact's, not the (empty) state dict's
    assert final["params"] == result.baseline["params"] and final["macs"] == result.baseline["macs"]
    onnx_bytes = len(result.model.files["model.onnx"])
    assert onnx_bytes < final["size_bytes"] < onnx_bytes + 8000
    assert result.steps[-1].info["output_error"] < 1e-5


def test_onnxruntime_static_int8_is_within_tolerance_and_smaller(engine, data):
    fp32 = run(engine, {"method": "onnxruntime"}, data, evaluate=("accuracy", "size"))
    int8 = run(engine, {"method": "onnxruntime", "precision": "int8"}, data, evaluate=("accuracy", "size"))
    assert int8.model.spec["precision"] == "int8"
    x = torch.randn(16, 3, 12, 12)
    reference = small_cnn()(x).detach()
    error = float((int8.model(x) - reference).norm() / reference.norm())
    assert 0 < error < 0.1  # quantized (not the fp32 graph), yet close
    assert int8.final["accuracy"] >= 0.8  # random weights: small margins, the digits bench scores a trained CNN
    assert int8.final["size_bytes"] < 0.6 * fp32.final["size_bytes"]  # int8 weights in the artifact


def test_saved_artifact_loads_without_a_base_model(engine, data, tmp_path):
    result = run(engine, {"method": "onnxruntime", "precision": "int8"}, data, evaluate=("size",))
    out = torchslim.save(result, tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.onnx" in manifest["files"]
    loaded = torchslim.load(out)
    assert isinstance(loaded, OnnxRuntimeModule)
    x = torch.randn(5, 3, 12, 12)
    torch.testing.assert_close(loaded(x), result.model(x))
    assert torchslim.load(out, base_model=small_cnn()).spec == loaded.spec  # a base model is not needed, not harmful
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(torchslim.SaveLoadError, match="model.onnx"):
        torchslim.load(out)


def test_plain_models_still_need_their_base_model(tmp_path):
    out = torchslim.save(small_cnn(), tmp_path / "plain")
    with pytest.raises(torchslim.SaveLoadError, match="pass base_model="):
        torchslim.load(out)


def test_torchscript_artifact_roundtrip(engine, data, tmp_path):
    result = run(engine, {"method": "torchscript"}, data, evaluate=("accuracy",))
    assert isinstance(result.model, TorchScriptModule) and result.final["accuracy"] == 1.0
    loaded = torchslim.load(torchslim.save(result, tmp_path / "ts"))
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(loaded(x), small_cnn()(x), rtol=1e-4, atol=1e-5)


def test_validation_rejects_a_step_after_deploy_and_bad_runtime_options(engine):
    with pytest.raises(torchslim.RecipeError, match="deploy step but step 2 .*must come last"):
        engine.recipe({"steps": [{"deploy": {"method": "onnxruntime"}}, {"finetune": {"method": "sgd"}}]})
    with pytest.raises(torchslim.RecipeError, match="precision"):
        engine.recipe({"steps": [{"deploy": {"method": "onnxruntime", "precision": "fp16"}}]})
    with pytest.raises(torchslim.RecipeError, match="search.runtime.*nosuchruntime"):
        engine.recipe({"search": {"target": {"latency_ms": 0.5}, "runtime": "nosuchruntime",
                                  "methods": [{"accelerate": {"method": "svd"}}]}})


def test_fp32_artifact_that_drifts_fails_the_step(engine, data):
    with pytest.raises(torchslim.StepError, match="max_error"):
        run(engine, {"method": "onnxruntime", "precision": "int8", "max_error": 1e-9}, data, evaluate=("size",))


def test_deploy_function_and_latency_table_keys_by_runtime():
    model = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    artifact = deploy(model, (x,), "onnxruntime")
    torch.testing.assert_close(artifact(x), model(x), rtol=1e-4, atol=1e-5)
    conv = model[0]
    assert pair_key(conv, conv, x) != pair_key(conv, conv, x, "onnxruntime")
    with pytest.raises(torchslim.TorchslimError, match="deploy"):
        deploy(model, (x,), "nosuchruntime")


def test_svd_latency_gate_times_layers_in_the_runtime():
    from torchslim.plugins.svd import decompose

    torch.manual_seed(0)
    x = torch.randn(32, 256)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()

    options = {"rank_ratio": 0.1, "latency_runs": 3}
    eager = decompose(build(), (x,), options).info["latency_table"]
    in_ort = decompose(build(), (x,), dict(options, runtime="onnxruntime")).info["latency_table"]
    again = decompose(build(), (x,), dict(options, runtime="onnxruntime")).info["latency_table"]
    # the same layer pairs, timed in ONNX Runtime: measured afresh under their own keys, then reused
    assert eager["measured"] >= 1 and (in_ort["measured"], in_ort["reused"]) == (eager["measured"], eager["reused"])
    assert again["measured"] == 0 and again["reused"] == in_ort["measured"] + in_ort["reused"]


@pytest.mark.slow
def test_inductor_fp32_and_int8(engine, data):
    if torchslim.runtime.unavailable("inductor") is not None:
        pytest.skip(torchslim.runtime.unavailable("inductor"))
    fp32 = run(engine, {"method": "inductor"}, data, evaluate=("accuracy",))
    assert isinstance(fp32.model, InductorModule) and fp32.final["accuracy"] == 1.0
    int8 = run(engine, {"method": "inductor", "precision": "int8"}, data, evaluate=("accuracy",))
    assert int8.final["accuracy"] >= 0.75 and 0 < int8.steps[-1].info["output_error"] < 0.1


class ReusedReluBlock(nn.Module):
    """A residual block that calls one ``nn.ReLU`` three times, as torchvision's ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.conv1(x))
        return self.relu(self.relu(self.conv2(y)) + x)


@pytest.mark.slow
def test_inductor_int8_quantizes_blocks_that_reuse_one_relu():
    if torchslim.runtime.unavailable("inductor") is not None:
        pytest.skip(torchslim.runtime.unavailable("inductor"))
    torch.manual_seed(0)
    model = ReusedReluBlock().eval()
    x = torch.randn(2, 8, 8, 8)
    artifact = deploy(model, (x,), "inductor", precision="int8", train_data=[(x, None)])
    reference = model(x).detach()
    assert float((artifact(x) - reference).norm() / reference.norm()) < 0.1


class TinyBertEncoder(nn.Module):
    """A two-layer BERT (random weights) taking positional (input_ids, attention_mask), as runtimes do."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64)
        self.bert = transformers.BertModel(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def padded_tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (8, 16), generator=generator)
    mask = torch.ones(8, 16, dtype=torch.long)
    mask[::2, 10:] = 0  # padding: the attention mask adds the dtype's minimum there
    return ids, mask


def test_static_int8_keeps_an_attention_models_masks_and_softmax_in_float():
    from torchslim.runtime import has_attention, relative_error

    model, x = TinyBertEncoder(), padded_tokens(0)
    assert has_attention(model) and not has_attention(small_cnn())
    calibration = [(padded_tokens(seed), None) for seed in range(1, 5)]
    reference = [model(*x)]
    errors = {ops: relative_error([deploy(model, x, "onnxruntime", precision="int8", train_data=calibration,
                                          quantize_ops=ops)(*x)], reference) for ops in ("auto", "all")}
    assert errors["auto"] < 0.05
    assert errors["auto"] < 0.75 * errors["all"]


def test_inductor_int8_deploys_a_transformer_whose_pooler_nothing_reads():
    """BERT computes its pooler (Linear + Tanh) even when the model returns the token states; the x86
    quantizer used to fail on that dead partition (IndexError), so no sentence encoder deployed int8."""
    if torchslim.runtime.unavailable("inductor") is not None:
        pytest.skip(torchslim.runtime.unavailable("inductor"))
    from torchslim.runtime import relative_error

    model, x = TinyBertEncoder(), padded_tokens(0)
    calibration = [(padded_tokens(seed), None) for seed in range(1, 3)]
    artifact = deploy(model, x, "inductor", precision="int8", train_data=calibration)
    assert relative_error([artifact(*x)], [model(*x)]) < 0.1


def test_an_int8_artifact_far_from_its_model_is_named_in_a_warning():
    from torchslim.runtime import int8_warnings

    assert int8_warnings("onnxruntime", "int8", 0.02) == []
    assert int8_warnings("onnxruntime", "fp32", 0.5) == []
    (warning,) = int8_warnings("onnxruntime", "int8", 0.6)
    assert "deploy/onnxruntime" in warning and "0.6" in warning and "fp32" in warning


def test_reduce_range_auto_follows_the_cpus_vnni(engine, data):
    from torchslim.cpu import has_vnni

    assert has_vnni({"avx2", "avx512_vnni"}) and has_vnni({"amx_int8"}) and not has_vnni({"avx2", "fma"})
    result = run(engine, {"method": "onnxruntime", "precision": "int8"}, data, evaluate=("accuracy",))
    assert result.model.spec["reduce_range"] is (not has_vnni())
    explicit = run(engine, {"method": "onnxruntime", "precision": "int8", "reduce_range": not has_vnni()}, data,
                   evaluate=("accuracy",))
    x = data[1]
    torch.testing.assert_close(result.model(x), explicit.model(x))
