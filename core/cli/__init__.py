"""The ``torchslim`` command line: plugins, strategies, check, run, export, deploy, demo.

:mod:`.parser` builds the arguments, :mod:`.loading` turns them into objects, :mod:`.commands` runs them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import DataError, ExportError, PluginError, RecipeError, SaveLoadError, TorchslimError
from .commands import COMMANDS, EXIT_BAD_INPUT, EXIT_CONSTRAINTS, EXIT_FAILED, write_outputs
from .loading import UsageError, load_object
from .parser import build_parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_CONSTRAINTS", "EXIT_FAILED", "UsageError", "build_parser", "load_object", "main", "write_outputs"]


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
        print(f"torchslim: error: {_lines(exc)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("torchslim: interrupted", file=sys.stderr)
        return 130


def _is_bad_input(exc: Exception) -> bool:
    return isinstance(exc, (UsageError, RecipeError, PluginError, DataError, SaveLoadError, ExportError))


def _lines(exc: Exception) -> str:
    """The error as the user should read it: one problem a line (a recipe with three problems shows three)."""
    lines = [line.rstrip() for line in str(exc).splitlines() if line.strip()]
    return "\n".join(lines)
