"""Every method on every zoo model: it works, skips what it cannot handle with a reason, or says why not.

"Works" means, through :meth:`torchslim.Engine.run`: outputs finite and of the original shape, the
metrics sane (and moving the way the method promises), the input model untouched, unusual state kept
(tied weights stay tied, integer and bool buffers keep their dtype and values) and a
``torchslim.save``/``torchslim.load`` round trip that reproduces the outputs exactly. A method may
instead raise a torchslim error whose message names the step; a raw exception from a plugin
(wrapped by the engine in a StepError whose direct cause is not a torchslim error) is a bug, and the
known ones are marked ``xfail(strict=True)`` with the reason until their owners fix them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torchslim
from torchslim.masks import underlying_tensor

from zoo_models import ZOO, ZooCase

EVALUATE = ["accuracy", "params", "nonzeros", "macs", "size"]

#: Built-in method variants: id -> (recipe step, what the method promises about the metrics).
METHODS: dict[str, tuple[dict, str]] = {
    "magnitude-global": ({"compress": {"method": "magnitude", "sparsity": 0.8, "scope": "global"}}, "sparsify"),
    "magnitude-2:4": ({"compress": {"method": "magnitude", "pattern": "2:4"}}, "sparsify"),
    "magnitude-structured": (
        {"compress": {"method": "magnitude", "sparsity": 0.3, "pattern": "structured"}}, "sparsify"),
    "svd-weight": ({"accelerate": {"method": "svd", "mac_ratio": 0.5, "measure_latency": False}}, "shrink"),
    "svd-spatial": (
        {"accelerate": {"method": "svd", "factorization": "spatial", "rank_ratio": 0.25, "measure_latency": False}}, "shrink"),
    "channel": ({"accelerate": {"method": "channel", "ratio": 0.3}}, "shrink"),
    "sgd": ({"finetune": {"method": "sgd", "epochs": 1}}, "same-shape"),
}

#: Contrib methods, run with their default options when their package is installed.
CONTRIB = ("int8", "distill")

#: (method id, zoo model) -> why it fails today. Each is a bug in the named component, reported to its owner.
#: None is known today; a new one goes here, marked xfail(strict=True) until it is fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def engine() -> torchslim.Engine:
    return torchslim.Engine()


def _params(methods: list[str]) -> list:
    out = []
    for method in methods:
        for name in ZOO:
            marks = []
            if (method, name) in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(method, name)]))
            out.append(pytest.param(method, name, id=f"{method}-{name}", marks=marks))
    return out


# ------------------------------------------------------------------------------------ checks
def _raw_cause(exc: BaseException) -> BaseException | None:
    """The non-torchslim exception a plugin or evaluator raised, when the engine wrapped one."""
    cause = exc.__cause__
    if isinstance(exc, torchslim.StepError) and cause is not None and not isinstance(cause, torchslim.TorchslimError):
        return cause
    return None


def _outputs(model: nn.Module, case: ZooCase) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(*case.example_inputs)


def _check_metrics(metrics: dict[str, float], where: str) -> None:
    assert metrics["params"] > 0, where
    assert 0 <= metrics["nonzeros"] <= metrics["params"], f"{where}: nonzeros {metrics['nonzeros']} > params"
    assert 0.0 <= metrics["accuracy"] <= 1.0, where
    assert metrics["macs"] > 0 and metrics["size_bytes"] > 0, where


def _check_promise(promise: str, before: dict[str, float], after: dict[str, float], record) -> None:
    if promise == "sparsify":
        assert after["params"] <= before["params"], f"pruning grew params {before['params']} -> {after['params']}"
        assert after["nonzeros"] < before["nonzeros"], "magnitude pruning removed no weight"
        assert after["macs"] == before["macs"], "masks must not change the dense MACs"
    elif promise == "shrink":
        assert after["params"] <= before["params"] and after["macs"] <= before["macs"], (before, after)
        if after["macs"] == before["macs"]:
            assert record.skipped, "nothing changed, yet no layer is listed as skipped with a reason"
    elif promise == "same-shape":
        assert (after["params"], after["macs"]) == (before["params"], before["macs"])


def _check_skipped(record, model: nn.Module) -> None:
    names = {name for name, _ in model.named_modules()}
    for entry in record.skipped:
        layer, reason = entry
        assert isinstance(reason, str) and reason.strip(), f"skipped {layer!r} without a reason"
        module = layer if layer in names else layer.rpartition(".")[0]  # a layer, or a layer's tensor
        assert module in names, f"skipped entry names {layer!r}, which is no layer or tensor of the input model"


def _kept_class(module: nn.Module, cls: type) -> bool:
    """True when ``module`` is still a ``cls`` (masks make it a parametrized subclass), not a replacement."""
    return isinstance(module, cls) and (type(module) is cls or parametrize.is_parametrized(module))


def _check_invariants(case: ZooCase, model: nn.Module) -> None:
    if case.name == "tied" and _kept_class(model.embed, nn.Embedding) and _kept_class(model.decoder, nn.Linear):
        # a method may replace one of them (factors, quantized modules); if it keeps both, they stay tied
        a, b = underlying_tensor(model.embed, "weight"), underlying_tensor(model.decoder, "weight")
        assert a is b, "embed.weight and decoder.weight are no longer one tensor: the tie was broken"
    if case.name == "buffers":
        assert model.calls.dtype == torch.int64 and model.offsets.dtype == torch.int32
        assert model.keep.dtype == torch.bool and torch.equal(model.keep, case.model.keep)
        assert model.scale.dtype == torch.float64 and torch.equal(model.scale, case.model.scale)


def _check_case(engine: torchslim.Engine, step: dict, promise: str, case: ZooCase, tmp_path) -> None:
    before = copy.deepcopy(case.model.state_dict())
    reference = _outputs(case.model, case)
    try:
        result = engine.run(case.model, {"steps": [step], "evaluate": EVALUATE}, train_data=case.loader(),
                            eval_data=case.loader(), example_inputs=case.example_inputs)
    except torchslim.TorchslimError as exc:
        raw = _raw_cause(exc)
        if raw is not None:
            pytest.fail(f"raw {type(raw).__name__} escaped a plugin or evaluator: {exc}")
        assert "step 1" in str(exc), f"the error does not name the step: {exc}"
        result = None
    after = case.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        "the input model was changed"
    if result is None:
        return
    record = result.steps[0]
    out = _outputs(result.model, case)
    assert out.shape == reference.shape and bool(torch.isfinite(out).all())
    _check_metrics(result.baseline, "baseline")
    _check_metrics(result.final, "after the step")
    _check_promise(promise, result.baseline, result.final, record)
    _check_skipped(record, case.model)
    _check_invariants(case, result.model)
    torchslim.save(result, tmp_path / "saved")
    loaded = torchslim.load(tmp_path / "saved", base_model=case.build())
    assert torch.equal(_outputs(loaded, case), out), "save/load round trip changed the outputs"
    _check_invariants(case, loaded)


# ------------------------------------------------------------------------------------ tests
def test_zoo_models_run_and_their_data_fits() -> None:
    for name, factory in ZOO.items():
        case = factory()
        out = _outputs(case.model, case)
        assert bool(torch.isfinite(out).all()), name
        assert case.targets.shape[0] == case.inputs.shape[0]
        assert int(case.targets.max()) < out.shape[1], f"{name}: labels exceed the model's classes"


@pytest.mark.parametrize("method, model_name", _params(list(METHODS)))
def test_builtin_method_on_zoo_model(engine, method, model_name, tmp_path) -> None:
    step, promise = METHODS[method]
    if method == "channel":
        pytest.importorskip("torch_pruning")
    _check_case(engine, step, promise, ZOO[model_name](), tmp_path)


@pytest.mark.parametrize("method, model_name", _params(list(CONTRIB)))
def test_contrib_method_on_zoo_model(engine, method, model_name, tmp_path) -> None:
    info = engine.registry.infos.get(method)
    if info is None or not info.stages:
        pytest.skip(f"contrib method {method!r} is not installed")
    stage = next(s for s in info.stages if s != "evaluate")
    promise = {"finetune": "same-shape"}.get(stage, "any")
    _check_case(engine, {stage: {"method": method}}, promise, ZOO[model_name](), tmp_path)


# ------------------------------------------------------------------------------------ fixed cases, spelled out
def test_svd_leaves_layers_whose_parent_reads_their_weight(engine) -> None:
    case = ZOO["transformer"]()
    step = {"accelerate": {"method": "svd", "rank_ratio": 0.5, "measure_latency": False}}
    result = engine.run(case.model, {"steps": [step], "evaluate": []}, example_inputs=case.example_inputs)
    skipped = dict(result.steps[0].skipped)
    for layer in ("encoder.layers.0", "encoder.layers.1"):
        for child in ("linear1", "linear2"):
            assert skipped[f"{layer}.{child}"].startswith(
                f"its parent TransformerEncoderLayer reads {child}.weight directly")
            assert type(result.model.get_submodule(f"{layer}.{child}")) is nn.Linear
        assert skipped[f"{layer}.self_attn.out_proj"].startswith(
            "its parent MultiheadAttention reads out_proj.weight directly")
    out = _outputs(result.model, case)  # eval mode: the fused fast path reads those weights again
    assert out.shape == _outputs(case.model, case).shape and bool(torch.isfinite(out).all())
    budget, _ = METHODS["svd-weight"]  # a MAC target those skipped layers put out of reach fails, saying why
    with pytest.raises(torchslim.StepError, match="mac_ratio=0.5 .* cannot be reached.*cannot be cut further"):
        engine.run(case.model, {"steps": [budget], "evaluate": []}, example_inputs=case.example_inputs)


def test_channel_keeps_tied_weights_tied_and_says_why(engine) -> None:
    pytest.importorskip("torch_pruning")
    case = ZOO["tied"]()
    step, _ = METHODS["channel"]
    result = engine.run(case.model, {"steps": [step], "evaluate": []}, example_inputs=case.example_inputs)
    model = result.model
    assert model.embed.weight is model.decoder.weight
    reason = dict(result.steps[0].skipped)["shared"]
    assert "the tied weight embed.weight = decoder.weight" in reason and "untie" in reason


def test_channel_pruned_plain_parameter_survives_save_and_load(engine, tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    case = ZOO["transformer"]()
    step, _ = METHODS["channel"]
    result = engine.run(case.model, {"steps": [step], "evaluate": []}, example_inputs=case.example_inputs)
    width = result.model.pos.shape[-1]
    assert width < case.model.pos.shape[-1]  # Torch-Pruning narrowed the learned positions
    torchslim.save(result, tmp_path / "saved")
    loaded = torchslim.load(tmp_path / "saved", base_model=case.build())
    assert loaded.pos.shape == result.model.pos.shape
    assert loaded.encoder.layers[0].self_attn.embed_dim == width
    assert torch.equal(_outputs(loaded, case), _outputs(result.model, case))
