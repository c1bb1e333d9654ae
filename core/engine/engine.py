"""The engine: validates a recipe, runs its steps on one copy of the model, and measures every stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import distributed, masks
from ..batches import describe_inputs, example_inputs_from, has_inputs
from ..constraints import check_constraints
from ..context import LossFn, MetricFn, RunContext
from ..errors import RecipeError, StepError, TorchslimError
from ..io.checkpoint import Checkpointer
from ..preflight import preflight
from ..recipe import Recipe, Step
from ..registry import PluginInfo, PluginRegistry
from ..results import RunResult, StepRecord
from ..search import Searcher
from ..seeding import seeded_loader
from ..surgery import fingerprint, model_device, private_copy
from .gaps import before_step, step_warnings
from .interface import interface_of
from .original import LentOriginal
from .steps import check_interface, run_nested, run_step
from .validation import check_inputs, check_targets, validate_options, validate_recipe

log = logging.getLogger("torchslim")


class Engine:
    """Discovers plugins and runs recipes.

    >>> engine = Engine()                                       # doctest: +SKIP
    >>> result = engine.run(model, recipe, train_data=loader, eval_data=loader)  # doctest: +SKIP
    >>> print(result.table())                                   # doctest: +SKIP
    """

    def __init__(self, registry: PluginRegistry | None = None, *, discover: bool = True,
                 allow: Iterable[str] | None = None, block: Iterable[str] | None = None,
                 strict: bool | None = None) -> None:
        self.registry = registry or PluginRegistry(discover=discover, allow=allow, block=block, strict=strict)

    # ------------------------------------------------------------------ plugins
    def register(self, plugin: Any, name: str | None = None) -> Any:
        """Register a private plugin at runtime under ``name`` (default: its ``name`` attribute)."""
        return self.registry.register(plugin, name=name)

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        self.registry.unregister(name)

    def plugins(self) -> list[PluginInfo]:
        """Every plugin known, with stage, distribution, version and load status."""
        return self.registry.plugins()

    def methods(self, stage: str) -> list[str]:
        """Installed method names of a stage."""
        return self.registry.methods(stage)

    # ------------------------------------------------------------------ recipes
    def recipe(self, recipe: Recipe | dict | str | Path) -> Recipe:
        """Turn a Recipe, dict, YAML/JSON path or text, or a strategy name into a validated Recipe."""
        if isinstance(recipe, str) and recipe in self.registry.strategies:
            recipe = self.registry.strategies[recipe].recipe
        if isinstance(recipe, Recipe):
            parsed = recipe
        elif isinstance(recipe, dict):
            parsed = Recipe.from_dict(recipe)
        elif isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe and Path(recipe).is_file()):
            parsed = Recipe.from_file(recipe)
        elif isinstance(recipe, str) and ("\n" in recipe or ":" in recipe):
            parsed = Recipe.from_yaml(recipe)
        elif isinstance(recipe, str):
            known = ", ".join(sorted(self.registry.strategies)) or "none"
            raise RecipeError(f"recipe {recipe!r} is neither an existing recipe file nor a strategy name; "
                              f"strategies: {known}")
        else:
            raise RecipeError(f"recipe must be a Recipe, dict, path or strategy name, got {type(recipe).__name__}")
        return self.validate(parsed)

    def validate(self, recipe: Recipe) -> Recipe:
        """Check every step's method and options and every evaluator; return a copy with typed options."""
        return validate_recipe(self.registry, recipe)

    def check_targets(self, model: nn.Module, recipe: Recipe) -> None:
        """Raise a :class:`RecipeError` for any step whose explicit targets select no module."""
        check_targets(self.registry, model, recipe)

    def check(self, model: nn.Module, recipe: Recipe | dict | str | Path, example_inputs: Any = None,
              **kwargs: Any) -> Any:
        """Pre-flight: which layers each step touches, skips or cannot handle, and the expected change.

        Runs every compress/accelerate step on a copy (fine-tuning is listed, not run) and measures
        MACs, parameters and saved size before and after each; returns a
        :class:`~torchslim.preflight.PreflightReport` (``.table()``, ``.to_dict()``, ``.ok``).
        ``kwargs`` (``train_data``, ``eval_data``, ``seed``) are passed to calibrating methods.
        """
        return preflight(self, model, recipe, example_inputs, **kwargs)

    # ------------------------------------------------------------------ running
    def run(
        self,
        model: nn.Module,
        recipe: Recipe | dict | str | Path,
        *,
        train_data: Iterable | None = None,
        eval_data: Iterable | None = None,
        example_inputs: Any = None,
        loss_fn: LossFn | None = None,
        metric_fn: MetricFn | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
    ) -> RunResult:
        """Run ``recipe`` on one deep copy of ``model``; the caller's model is never changed.

        Evaluates the baseline, runs each step and evaluates after it. A plugin that raises stops the
        run with a :class:`StepError` naming the step and plugin, chained to the original exception.
        ``output_fn(output) -> tensor`` picks the scored output of models returning dicts, ``ModelOutput``s
        or tuples (the recipe's ``evaluation.output`` does the same by name). With ``out_dir``, the model is checkpointed after every step and a rerun of the same recipe,
        seed and model resumes after the last finished step, with the same final result.
        """
        if not isinstance(model, nn.Module):
            raise TorchslimError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        recipe = self.recipe(recipe)
        self.check_targets(model, recipe)
        example_inputs = example_inputs_from(example_inputs, eval_data, train_data)
        check_inputs(self.registry, recipe, {"train_data": train_data is not None, "eval_data": eval_data is not None,
                                             "example_inputs": has_inputs(example_inputs)})
        seed = recipe.seed if recipe.seed is not None else seed
        device = torch.device(device) if device is not None else model_device(model)
        # Under torchrun: join the process group; a CUDA device becomes this rank's cuda:LOCAL_RANK.
        device = distributed.setup(device)
        original = LentOriginal(model, device)
        context = RunContext(
            train_data=train_data, eval_data=eval_data,
            example_inputs=example_inputs,
            original_factory=original.get, loss_fn=loss_fn, metric_fn=metric_fn, output_fn=output_fn, device=device, seed=seed,
            recipe=recipe, evaluation=recipe.evaluation,
        )
        context.runner = lambda m, raw: run_nested(self.registry, m, raw, context, self._validate_step)
        try:
            return self._run(model, recipe, context, original, out_dir)
        finally:
            original.restore()

    def _run(self, model: nn.Module, recipe: Recipe, context: RunContext, original: LentOriginal,
             out_dir: str | Path | None) -> RunResult:
        checkpointer = None
        if out_dir is not None:  # rank 0's fingerprint: every rank resumes the same run
            checkpointer = Checkpointer(out_dir, recipe, context.seed, distributed.broadcast_object(fingerprint(model)))
        resumed = checkpointer.resume(model) if checkpointer else None  # load() makes the one copy
        if not distributed.same_on_every_rank(len(resumed[2]) if resumed else 0):
            raise TorchslimError(f"out_dir {str(out_dir)!r}: the ranks see different checkpoints; put out_dir on "
                                 f"a filesystem every node shares")
        working = resumed[0] if resumed else private_copy(model)  # the run's one deep copy
        working = working.to(context.device)
        # Every rank starts from rank 0's model, also when each process initialised it at random.
        distributed.sync_model(working, "the input model", warn=False)
        baseline, records = (resumed[1], resumed[2]) if resumed else (self._evaluate(working, recipe, context), [])
        interface = interface_of(working, context.example_inputs, context.device)
        for index, step in enumerate(recipe.steps, start=1):
            if index <= len(records):
                continue
            plugin = self.registry.get(step.stage, step.method)
            before = before_step(working, step, plugin)
            with seeded_loader(context.train_data, context.seed + index):
                working, record = run_step(self.registry, working, step, index, context)
            where = f"step {index} ({step.label})"
            original.check(where)
            interface = check_interface(plugin, working, interface, context, where, f"plugin {step.method!r}")
            record.warnings += step_warnings(before, working, step, record.skipped)
            for warning in record.warnings:
                log.warning("step %d: %s", index, warning)
            distributed.sync_model(working, f"step {index} ({step.label})")
            record.metrics = self._evaluate(working, recipe, context)
            records.append(record)
            log.info("step %d (%s) done", index, step.label)
            if checkpointer is not None and distributed.is_main():
                checkpointer.write(working, baseline, records)
        search_summary = None
        if recipe.search is not None:
            working, search_summary = self._search(working, recipe, context, records, baseline, out_dir)
        if recipe.bake_masks:
            masks.finalize(working)
        working.eval()  # the result is for inference; fine-tune it further with .train()
        directions = dict(self.registry.directions())
        result = RunResult(model=working, recipe=recipe, baseline=baseline, steps=records,
                           directions=directions, seed=context.seed, search=search_summary,
                           example_inputs=describe_inputs(context.example_inputs))
        result.constraints = check_constraints(recipe, baseline, result.final, directions)
        return result

    def _search(self, working: nn.Module, recipe: Recipe, context: RunContext, records: list[StepRecord],
                baseline: dict[str, float], out_dir: str | Path | None) -> tuple[nn.Module, dict[str, Any]]:
        searcher = Searcher(self.registry, recipe.search, context, list(recipe.evaluate),
                            Path(out_dir) if out_dir is not None else None)
        working, found, summary = searcher.run(working, records[-1].metrics if records else baseline,
                                               evaluate=lambda m: self._evaluate(m, recipe, context))
        for offset, record in enumerate(found, start=len(records) + 1):
            record.index = offset
        records += found
        return working, summary

    def _validate_step(self, step: Step, where: str) -> Any:
        return validate_options(self.registry, step, where)

    def _evaluate(self, model: nn.Module, recipe: Recipe, context: RunContext) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.registry.evaluate(recipe.evaluate, model, context)
        except TorchslimError:
            raise
        except Exception as exc:
            raise StepError(f"evaluation after step {context.step_index} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
