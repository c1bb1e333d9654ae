"""The argument parser of the ``torchslim`` command (docs/cli.md is generated from it)."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_CODES = """exit codes:
  0  done
  1  a step or an evaluation failed while running
  2  bad input (command line, recipe, data, plugins, saved files), found before any work
  3  the run finished and wrote its outputs, but a constraint (or the search's target) was not met"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchslim`` command (docs/cli.md is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="torchslim",
        description="Make trained PyTorch models smaller and faster, fine-tune them back, and prove it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_plugins(sub)
    _add_strategies(sub)
    _add_run(sub)
    _add_check(sub)
    _add_export(sub)
    _add_deploy(sub)
    _add_demo(sub)
    return parser


def _add_plugins(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="list installed plugins with stage, package, version, status",
                             description="List every plugin found through the 'torchslim' entry points.")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_strategies(sub: Any) -> None:
    strategies = sub.add_parser("strategies", help="list named recipes registered by plugins",
                                description="List the strategies (named recipes) plugins register.")
    strategies.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run a recipe on your model",
                         description="Run a recipe (YAML/JSON file) or a strategy on a model and write the "
                                     "report (Markdown, JSON) and the compressed model into --out.")
    run.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json)")
    run.add_argument("--strategy", help="run a registered strategy instead of a recipe file")
    run.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                     help="callable returning the trained nn.Module, e.g. mypkg.models:build; or hf:PATH, a "
                          "local transformers directory (config.json and weights; the hf extra)")
    run.add_argument("--weights", metavar="FILE",
                     help="optional .safetensors state dict loaded into the model (never a pickle)")
    run.add_argument("--data", metavar="MODULE:FACTORY",
                     help="callable returning (train_loader, eval_loader) or a dict with train_data, "
                          "eval_data, example_inputs, loss_fn, metric_fn")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder for report and model")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--device", default=None, help="torch device (default: the model's)")


def _add_check(sub: Any) -> None:
    check = sub.add_parser("check", help="pre-flight a recipe: layers touched/skipped, expected change",
                           description="Dry-run the recipe's compress/accelerate steps on a copy of the "
                                       "model (fine-tuning is listed, not run) and show which layers each "
                                       "step touches, skips or cannot handle, with MACs/params/size "
                                       "before and after. Exit code 1 when a step cannot run.")
    check.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json)")
    check.add_argument("--strategy", help="check a registered strategy instead of a recipe file")
    check.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                       help="callable returning the model, or hf:PATH (a local transformers directory)")
    check.add_argument("--weights", metavar="FILE", help="optional .safetensors state dict for the model")
    check.add_argument("--data", metavar="MODULE:FACTORY", help="data factory, as for run (for calibration)")
    check.add_argument("--input-shape", metavar="SHAPE", help="example input shape, e.g. 1x3x224x224")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_export(sub: Any) -> None:
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


def _add_deploy(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="deploy the recipe's model in every installed runtime and compare them",
                            description="Run the recipe's steps (a deploy step is left for last and replaced by "
                                        "the comparison), then deploy the model in each installed runtime "
                                        "and precision and print latency, artifact size and accuracy of each, "
                                        "measured on the artifact, marking those that meet the recipe's "
                                        "constraints; runtimes that cannot run here are listed with the reason. "
                                        "Exit code 3 when no runtime meets the constraints.")
    deploy.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml/.json)")
    deploy.add_argument("--strategy", help="use a registered strategy instead of a recipe file")
    deploy.add_argument("--model", required=True, metavar="MODULE:FACTORY", help="callable returning the model")
    deploy.add_argument("--weights", metavar="FILE", help="optional .safetensors state dict for the model")
    deploy.add_argument("--data", metavar="MODULE:FACTORY",
                        help="data factory, as for run (accuracy, and int8 calibration on train_data)")
    deploy.add_argument("--input-shape", metavar="SHAPE", help="example input shape when there is no --data")
    deploy.add_argument("--runtimes", metavar="NAMES", help="comma-separated runtimes (default: every installed one)")
    deploy.add_argument("--precisions", metavar="NAMES", help="comma-separated precisions, e.g. fp32,int8 "
                                                              "(default: every one a runtime offers)")
    deploy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    deploy.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_demo(sub: Any) -> None:
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
