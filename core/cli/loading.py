"""Turning command-line options into Python objects: factories, data, the model, example inputs."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..batches import as_inputs, split_batch
from ..errors import TorchslimError


class UsageError(TorchslimError):
    """Bad command-line input (exit code 2)."""

def load_object(spec: str, option: str) -> Any:
    """Import ``module:attribute`` (``module.sub:attr.inner``), with a clear error naming the option."""
    if ":" not in spec:
        raise UsageError(f"{option} {spec!r} must look like 'package.module:callable'")
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # users point at modules in their working directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{option} {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def call_factory(spec: str, option: str) -> Any:
    factory = load_object(spec, option)
    return factory() if callable(factory) else factory


def data_kwargs(spec: str | None) -> dict[str, Any]:
    if spec is None:
        return {}
    data = call_factory(spec, "--data")
    if isinstance(data, dict):
        allowed = {"train_data", "eval_data", "example_inputs", "loss_fn", "metric_fn"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UsageError(f"--data returned unknown keys {unknown}; allowed: {sorted(allowed)}")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return {"train_data": data[0], "eval_data": data[1]}
    raise UsageError("--data must return (train_loader, eval_loader) or a dict of Engine.run arguments")


def hf_model(spec: str) -> nn.Module:
    """``hf:PATH``: a transformers model from a local directory (``config.json`` plus weights, or only a
    config, which builds a randomly initialised model). Offline: nothing is downloaded."""
    path = Path(spec[len("hf:"):]).expanduser()
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {spec!r}: {str(path)!r} is not a local directory with a config.json; give "
                         f"hf:PATH to a folder written by save_pretrained (hub names are not downloaded)")
    try:
        import transformers

        from ..hf import from_pretrained
    except ImportError as exc:
        raise UsageError(f"--model {spec!r} needs transformers ({exc}); pip install 'torchslim[hf]'") from None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or (path / "torchslim").is_dir()
    if has_weights:
        return from_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    return cls(config) if cls is not None else transformers.AutoModel.from_config(config)


def hf_example_inputs(model: nn.Module) -> dict | None:
    """Keyword example inputs for a transformers model run without --data: 16 token ids (``input_ids``) or
    one image of the config's size (``pixel_values``); None for other inputs."""
    name, config = getattr(model, "main_input_name", None), getattr(model, "config", None)
    if name == "input_ids":
        return {"input_ids": torch.arange(16).remainder(max(1, getattr(config, "vocab_size", 16))).unsqueeze(0)}
    if name == "pixel_values" and isinstance(getattr(config, "image_size", None), int):
        size = config.image_size
        return {"pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), size, size)}
    return None


def build_model(args: argparse.Namespace):
    if args.model.startswith("hf:"):
        model = hf_model(args.model)
    else:
        model = call_factory(args.model, "--model")
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {args.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        path = Path(args.weights)
        if not path.is_file():
            raise UsageError(f"--weights {args.weights!r} does not exist")
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - any mismatch is the user's input
            raise UsageError(f"--weights {args.weights!r} does not fit the model: {exc}") from exc
    return model


def example_inputs_of(args: argparse.Namespace, data: dict[str, Any] | None = None) -> tuple | dict:
    if args.input_shape:
        try:
            shape = [int(part) for part in args.input_shape.lower().replace(",", "x").split("x")]
        except ValueError:
            raise UsageError(f"--input-shape {args.input_shape!r} must look like 1x3x224x224") from None
        return (torch.zeros(shape),)
    if data is None and args.data:
        data = data_kwargs(args.data)
    if data:
        if data.get("example_inputs") is not None:
            return as_inputs(data["example_inputs"])
        loader = data.get("eval_data") or data.get("train_data")
        inputs, _ = split_batch(next(iter(loader)))
        return as_inputs(inputs)  # a dict of keyword inputs stays a dict
    raise UsageError(f"{args.command} needs an example input: give --input-shape 1x3x224x224 or --data MODULE:FACTORY")
