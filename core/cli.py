"""The ``torchslim`` command line: plugins, strategies, run, demo."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import TorchslimError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(TorchslimError):
    """Bad command-line input (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchslim`` command (docs/cli.md is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="torchslim",
        description="Make trained PyTorch models smaller and faster, fine-tune them back, and prove it.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = sub.add_parser("plugins", help="list installed plugins with stage, package, version, status",
                             description="List every plugin found through the 'torchslim' entry points.")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")

    strategies = sub.add_parser("strategies", help="list named recipes registered by plugins",
                                description="List the strategies (named recipes) plugins register.")
    strategies.add_argument("--json", action="store_true", help="print JSON instead of a table")

    run = sub.add_parser("run", help="run a recipe on your model",
                         description="Run a recipe (YAML/JSON file) or a strategy on a model and write the "
                                     "report (Markdown, JSON) and the compressed model into --out.")
    run.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json)")
    run.add_argument("--strategy", help="run a registered strategy instead of a recipe file")
    run.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                     help="callable returning the trained nn.Module, e.g. mypkg.models:build")
    run.add_argument("--weights", metavar="FILE",
                     help="optional .safetensors state dict loaded into the model (never a pickle)")
    run.add_argument("--data", metavar="MODULE:FACTORY",
                     help="callable returning (train_loader, eval_loader) or a dict with train_data, "
                          "eval_data, example_inputs, loss_fn, metric_fn")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder for report and model")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--device", default=None, help="torch device (default: the model's)")

    check = sub.add_parser("check", help="pre-flight a recipe: layers touched/skipped, expected change",
                           description="Dry-run the recipe's compress/accelerate steps on a copy of the "
                                       "model (fine-tuning is listed, not run) and show which layers each "
                                       "step touches, skips or cannot handle, with MACs/params/size "
                                       "before and after. Exit code 1 when a step cannot run.")
    check.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json)")
    check.add_argument("--strategy", help="check a registered strategy instead of a recipe file")
    check.add_argument("--model", required=True, metavar="MODULE:FACTORY", help="callable returning the model")
    check.add_argument("--weights", metavar="FILE", help="optional .safetensors state dict for the model")
    check.add_argument("--data", metavar="MODULE:FACTORY", help="data factory, as for run (for calibration)")
    check.add_argument("--input-shape", metavar="SHAPE", help="example input shape, e.g. 1x3x224x224")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")

    export = sub.add_parser("export", help="export a saved model to ONNX and/or TorchScript",
                            description="Rebuild a model saved by torchslim (run --out DIR/model, or "
                                        "torchslim.save) on a fresh base model and export it, checking "
                                        "the exported outputs against PyTorch's.")
    export.add_argument("directory", help="a folder written by torchslim.save (e.g. OUT/model)")
    export.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="callable returning the base model as built before compression")
    export.add_argument("--onnx", metavar="FILE", help="write an ONNX file (needs torchslim[onnx])")
    export.add_argument("--torchscript", metavar="FILE", help="write a TorchScript file (torch.jit.trace)")
    export.add_argument("--freeze", action="store_true",
                        help="freeze the TorchScript file for inference (batch norms folded into the convs)")
    export.add_argument("--input-shape", metavar="SHAPE",
                        help="shape of one example input, e.g. 1x3x224x224 (float32 zeros)")
    export.add_argument("--data", metavar="MODULE:FACTORY",
                        help="take the example input from the first eval batch of this data factory instead")
    export.add_argument("--no-check", action="store_true", help="skip comparing exported outputs with PyTorch")

    demo = sub.add_parser("demo", help="train a digits CNN, compress it, print before/after",
                          description="Train a small CNN on scikit-learn's digits (shipped with the "
                                      "package), run the built-in demo recipe and print the table.")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs of the base model")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--recipe", help="run this recipe file instead of the built-in demo recipe")
    demo.add_argument("--out", metavar="DIR", help="also write the report and model here")
    demo.add_argument("--target", metavar="METRIC=RATIO",
                      help="search automatically for the demo methods' per-layer strengths that reach "
                           "this target (e.g. macs=0.5) within 1 accuracy point")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchslim`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except (UsageError, TorchslimError) as exc:
        if args.debug:
            raise
        code = EXIT_BAD_INPUT if _is_bad_input(exc) else EXIT_FAILED
        print(f"torchslim: error: {_one_line(exc)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("torchslim: interrupted", file=sys.stderr)
        return 130


def _is_bad_input(exc: Exception) -> bool:
    from .errors import DataError, PluginError, RecipeError, SaveLoadError
    from .export import ExportError

    return isinstance(exc, (UsageError, RecipeError, PluginError, DataError, SaveLoadError, ExportError))


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    from .report import rows_table

    return rows_table(rows)


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import PluginRegistry

    rows = [
        {"name": p.name, "stage": p.kind, "distribution": p.distribution, "version": p.version,
         "status": p.status if not p.error else f"{p.status}: {p.error}"}
        for p in PluginRegistry().plugins()
    ]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from .registry import PluginRegistry

    rows = [{"name": s.name, "distribution": s.distribution, "description": s.description}
            for s in sorted(PluginRegistry().strategies.values(), key=lambda s: s.name)]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


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


def _call_factory(spec: str, option: str) -> Any:
    factory = load_object(spec, option)
    return factory() if callable(factory) else factory


def _data_kwargs(spec: str | None) -> dict[str, Any]:
    if spec is None:
        return {}
    data = _call_factory(spec, "--data")
    if isinstance(data, dict):
        allowed = {"train_data", "eval_data", "example_inputs", "loss_fn", "metric_fn"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise UsageError(f"--data returned unknown keys {unknown}; allowed: {sorted(allowed)}")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return {"train_data": data[0], "eval_data": data[1]}
    raise UsageError("--data must return (train_loader, eval_loader) or a dict of Engine.run arguments")


def _build_model(args: argparse.Namespace):
    from torch import nn

    model = _call_factory(args.model, "--model")
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {args.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        from safetensors.torch import load_file

        path = Path(args.weights)
        if not path.is_file():
            raise UsageError(f"--weights {args.weights!r} does not exist")
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - any mismatch is the user's input
            raise UsageError(f"--weights {args.weights!r} does not fit the model: {exc}") from exc
    return model


def write_outputs(result, out: Path) -> list[Path]:
    """Write ``report.md``, ``report.json`` and the model (``torchslim.save``) into ``out``."""
    from .io import save

    out.mkdir(parents=True, exist_ok=True)
    report_md = out / "report.md"
    report_md.write_text("# torchslim report\n\n" + result.table(tablefmt="github") + "\n")
    report_json = out / "report.json"
    report_json.write_text(result.to_json())
    model_dir = save(result, out / "model")
    return [report_md, report_json, Path(model_dir)]


def _engine_and_recipe(args: argparse.Namespace):
    from .engine import Engine

    if bool(args.recipe) == bool(args.strategy):
        raise UsageError("give either a recipe file or --strategy NAME (exactly one)")
    engine = Engine()
    if args.recipe and not Path(args.recipe).is_file():
        raise UsageError(f"recipe file {args.recipe!r} does not exist")
    if args.strategy and args.strategy not in engine.registry.strategies:
        known = ", ".join(sorted(engine.registry.strategies)) or "none"
        raise UsageError(f"unknown strategy {args.strategy!r}; installed strategies: {known}")
    return engine, engine.recipe(Path(args.recipe) if args.recipe else args.strategy)


def cmd_check(args: argparse.Namespace) -> int:
    engine, recipe = _engine_and_recipe(args)
    model = _build_model(args)
    data = _data_kwargs(args.data)
    inputs = _example_inputs(args, data)
    kwargs = {k: v for k, v in data.items() if k in ("train_data", "eval_data")}
    report = engine.check(model, recipe, inputs, **kwargs)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.table())
    return 0 if report.ok else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    engine, recipe = _engine_and_recipe(args)
    model = _build_model(args)
    data = _data_kwargs(args.data)
    result = engine.run(model, recipe, seed=args.seed, device=args.device, out_dir=Path(args.out), **data)
    from . import distributed

    if distributed.is_main():  # under torchrun, rank 0 alone prints and writes
        print(result.table())
        _print_plots(result)
        written = write_outputs(result, Path(args.out))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0 if result.constraints_met else EXIT_FAILED


def _print_plots(result) -> None:
    for path in (result.search or {}).get("plots", []):
        print(f"plot: {path}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    from .engine import Engine

    engine = Engine()
    recipe = None
    if args.recipe and args.target:
        raise UsageError("give --recipe or --target, not both")
    if args.recipe:
        from .recipe import Recipe

        recipe = Recipe.from_file(args.recipe)
    if args.target:
        from .demo import search_recipe

        metric, _, value = args.target.partition("=")
        try:
            ratio = float(value)
        except ValueError:
            raise UsageError(f"--target {args.target!r} must look like macs=0.5") from None
        recipe = search_recipe(engine, metric.strip(), ratio)
    result = run_demo(seed=args.seed, epochs=args.epochs, recipe=recipe, engine=engine,
                      out_dir=Path(args.out) if args.out else None)
    _print_plots(result)
    if args.out:
        written = write_outputs(result, Path(args.out))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _example_inputs(args: argparse.Namespace, data: dict[str, Any] | None = None) -> tuple:
    import torch

    from .batches import split_batch

    if args.input_shape:
        try:
            shape = [int(part) for part in args.input_shape.lower().replace(",", "x").split("x")]
        except ValueError:
            raise UsageError(f"--input-shape {args.input_shape!r} must look like 1x3x224x224") from None
        return (torch.zeros(shape),)
    if data is None and args.data:
        data = _data_kwargs(args.data)
    if data:
        if data.get("example_inputs") is not None:
            inputs = data["example_inputs"]
            return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        loader = data.get("eval_data") or data.get("train_data")
        inputs, _ = split_batch(next(iter(loader)))
        return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    raise UsageError(f"{args.command} needs an example input: give --input-shape 1x3x224x224 or --data MODULE:FACTORY")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, export_torchscript
    from .io import load

    if not (args.onnx or args.torchscript):
        raise UsageError("nothing to export: give --onnx FILE and/or --torchscript FILE")
    if args.freeze and not args.torchscript:
        raise UsageError("--freeze applies to the TorchScript file: give --torchscript FILE too")
    base = _call_factory(args.model, "--model")
    model = load(args.directory, base_model=base)
    inputs = _example_inputs(args)
    if args.onnx:
        print(f"wrote {export_onnx(model, inputs, args.onnx, check=not args.no_check)}")
    if args.torchscript:
        print(f"wrote {export_torchscript(model, inputs, args.torchscript, check=not args.no_check, freeze=args.freeze)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plugins": cmd_plugins, "strategies": cmd_strategies, "run": cmd_run, "check": cmd_check,
    "export": cmd_export,
    "demo": cmd_demo,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
