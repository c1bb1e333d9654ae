"""The ``torchslim`` subcommands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from .. import distributed
from ..demo import run_demo, search_recipe
from ..engine import Engine
from ..engine.deployment import compare_runtimes
from ..export import export_onnx, export_torchscript
from ..io import load, save
from ..recipe import Recipe
from ..registry import PluginRegistry
from ..tables import rows_table
from .loading import UsageError, build_model, call_factory, data_kwargs, example_inputs_of, hf_example_inputs

#: Exit codes: 0 done; 1 a step or evaluation failed while running; 2 bad input (command line, recipe,
#: data, plugins, saved files), found before any work; 3 the run finished and wrote its outputs, but a
#: constraint (or the search's target) was not met.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONSTRAINTS = 3


def cmd_plugins(args: argparse.Namespace) -> int:
    rows = [
        {"name": p.name, "stage": p.role, "distribution": p.distribution, "version": p.version,
         "status": p.status if not p.error else f"{p.status}: {p.error}"}
        for p in PluginRegistry().plugins()
    ]
    print(json.dumps(rows, indent=2) if args.json else rows_table(rows))
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "distribution": s.distribution, "description": s.description}
            for s in sorted(PluginRegistry().strategies.values(), key=lambda s: s.name)]
    print(json.dumps(rows, indent=2) if args.json else rows_table(rows))
    return 0


def write_outputs(result, out: Path) -> list[Path]:
    """Write ``report.md``, ``report.json`` and the model (``torchslim.save``) into ``out``; a transformers
    model also goes to ``out/hf`` (:func:`torchslim.hf.save_pretrained`)."""
    out.mkdir(parents=True, exist_ok=True)
    report_md = out / "report.md"
    report_md.write_text("# torchslim report\n\n" + result.table(tablefmt="github") + "\n")
    report_json = out / "report.json"
    report_json.write_text(result.to_json())
    model_dir = save(result, out / "model")
    written = [report_md, report_json, Path(model_dir)]
    if hasattr(getattr(result.model, "config", None), "to_dict"):  # a transformers model: also its own format
        from ..hf import save_pretrained

        written.append(save_pretrained(result, out / "hf").directory)
    return written


def _engine_and_recipe(args: argparse.Namespace):
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
    model = build_model(args)
    data = data_kwargs(args.data)
    hf_inputs = args.model.startswith("hf:") and not (data or args.input_shape)
    inputs = (hf_example_inputs(model) if hf_inputs else None) or example_inputs_of(args, data)
    kwargs = {k: v for k, v in data.items() if k in ("train_data", "eval_data")}
    report = engine.check(model, recipe, inputs, **kwargs)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.table())
    return 0 if report.ok else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    engine, recipe = _engine_and_recipe(args)
    model = build_model(args)
    data = data_kwargs(args.data)
    if args.model.startswith("hf:") and not any(data.get(k) is not None for k in
                                                  ("example_inputs", "train_data", "eval_data")):
        data["example_inputs"] = hf_example_inputs(model)
    result = engine.run(model, recipe, seed=args.seed, device=args.device, out_dir=Path(args.out), **data)
    if distributed.is_main():  # under torchrun, rank 0 alone prints and writes
        print(result.table())
        _print_plots(result)
        written = write_outputs(result, Path(args.out))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0 if result.constraints_met else EXIT_CONSTRAINTS


def _print_plots(result) -> None:
    for path in (result.search or {}).get("plots", []):
        print(f"plot: {path}")


def cmd_demo(args: argparse.Namespace) -> int:
    engine = Engine()
    recipe = None
    if args.recipe and args.target:
        raise UsageError("give --recipe or --target, not both")
    if args.recipe:
        recipe = Recipe.from_file(args.recipe)
    if args.target:
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
    else:
        print("nothing was saved; add --out DIR to keep the report and the compressed model")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if not (args.onnx or args.torchscript):
        raise UsageError("nothing to export: give --onnx FILE and/or --torchscript FILE")
    if args.freeze and not args.torchscript:
        raise UsageError("--freeze applies to the TorchScript file: give --torchscript FILE too")
    base = call_factory(args.model, "--model")
    model = load(args.directory, base_model=base)
    inputs = example_inputs_of(args)
    if args.onnx:
        print(f"wrote {export_onnx(model, inputs, args.onnx, check=not args.no_check)}")
    if args.torchscript:
        print(f"wrote {export_torchscript(model, inputs, args.torchscript, check=not args.no_check, freeze=args.freeze)}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    engine, recipe = _engine_and_recipe(args)
    steps = [step for step in recipe.steps if step.stage != "deploy"]  # every runtime is tried instead
    recipe = recipe.model_copy(update={"steps": steps})
    model = build_model(args)
    data = data_kwargs(args.data)
    if args.input_shape or not data.get("example_inputs"):
        if args.input_shape or not (data.get("eval_data") or data.get("train_data")):
            data["example_inputs"] = example_inputs_of(args, data)
    result = engine.run(model, recipe, seed=args.seed, **data)
    names = [name.strip() for name in args.runtimes.split(",")] if args.runtimes else None
    precisions = [name.strip() for name in args.precisions.split(",")] if args.precisions else None
    rows = compare_runtimes(engine, result, runtimes=names, precisions=precisions,
                            **{k: v for k, v in data.items() if k != "example_inputs"},
                            example_inputs=data.get("example_inputs"))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        shown = [{key: ("yes" if value is True else "no" if value is False else value) for key, value in row.items()}
                 for row in rows]
        print(rows_table(shown))
    deployed = [row for row in rows[1:] if row["status"] == "ok"]
    return 0 if any(row["meets"] for row in deployed) else EXIT_CONSTRAINTS


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plugins": cmd_plugins, "strategies": cmd_strategies, "run": cmd_run, "check": cmd_check,
    "export": cmd_export, "deploy": cmd_deploy,
    "demo": cmd_demo,
}
