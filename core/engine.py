"""The engine: validates a recipe, runs its steps on a copy of the model, and measures every stage."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from . import distributed
from .batches import example_inputs_from
from .checkpoint import Checkpointer
from .context import LossFn, MetricFn, RunContext
from .errors import PluginError, RecipeError, StepError, TorchslimError
from .instrument import Instrument
from .registry import PluginInfo, PluginRegistry
from .recipe import Recipe, Step, Targets, format_validation_error
from .results import RunResult, StepRecord, StepResult
from .targets import WEIGHT_LAYERS, require_selection

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
        self.registry.pm.register(Instrument(), name="torchslim.instrument")

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
        recipe = recipe.model_copy(deep=True)
        problems: list[str] = []
        for index, step in enumerate(recipe.steps):
            where = f"step {index + 1} ({step.label})"
            try:
                step.options = self._validate_options(step, where)
            except (RecipeError, PluginError) as exc:
                problems.append(str(exc) if str(exc).startswith(where) else f"{where}: {exc}")
        if recipe.search is not None:
            steps = [(f"search.methods[{i + 1}]", s) for i, s in enumerate(recipe.search.methods)]
            if recipe.search.finetune is not None:
                steps.append(("search.finetune", recipe.search.finetune))
            for label, step in steps:
                where = f"{label} ({step.label})"
                try:
                    step.options = self._validate_options(step, where)
                except (RecipeError, PluginError) as exc:
                    problems.append(str(exc) if str(exc).startswith(where) else f"{where}: {exc}")
        for name in recipe.evaluate:
            try:
                self.registry.get("evaluate", name)
            except PluginError as exc:
                problems.append(f"evaluate: {exc}")
        produced = self.registry.directions()
        for kind, limits in (("max_drop", recipe.constraints.max_drop), ("max_ratio", recipe.constraints.max_ratio)):
            for metric in limits:
                if metric not in produced:
                    problems.append(
                        f"constraints.{kind}.{metric}: no installed evaluator produces metric {metric!r}; "
                        f"known metrics: {', '.join(sorted(produced))}"
                    )
        if problems:
            raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
        return recipe

    def _validate_options(self, step: Step, where: str) -> Any:
        options_model = self.registry.options_model(step.stage, step.method)
        raw = step.options
        if options_model is not None and isinstance(raw, options_model):
            return raw  # already validated (a nested or search step reusing a recipe's options)
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(exclude_unset=True)
        if options_model is None:
            if raw:
                raise RecipeError(f"{where}: method {step.method!r} takes no options, got {sorted(raw)}")
            return raw
        known = set(options_model.model_fields) | {
            f.alias for f in options_model.model_fields.values() if f.alias
        }
        extra = sorted(set(raw) - known)
        if extra and options_model.model_config.get("extra") != "allow":
            raise RecipeError(
                f"{where}: unknown option(s) {', '.join(extra)}; {step.method} accepts: {', '.join(sorted(known))}"
            )
        try:
            return options_model.model_validate(raw)
        except ValidationError as exc:
            text = format_validation_error(exc, raw, prefix=where)
            raise RecipeError(text.replace("invalid recipe:\n  ", "")) from None

    def check_targets(self, model: nn.Module, recipe: Recipe) -> None:
        """Raise a :class:`RecipeError` for any step whose explicit targets select no module."""
        for index, step in enumerate(recipe.steps):
            if step.targets == Targets():
                continue
            plugin = self.registry.get(step.stage, step.method)
            defaults = getattr(plugin, "default_types", WEIGHT_LAYERS)
            try:
                require_selection(model, step.targets, defaults, f"step {index + 1} ({step.label})")
            except TorchslimError as exc:
                raise RecipeError(str(exc)) from None

    def check(self, model: nn.Module, recipe: Recipe | dict | str | Path, example_inputs: Any = None,
              **kwargs: Any) -> Any:
        """Pre-flight: which layers each step touches, skips or cannot handle, and the expected change.

        Runs every compress/accelerate step on a copy (fine-tuning is listed, not run) and measures
        MACs, parameters and saved size before and after each; returns a
        :class:`~torchslim.preflight.PreflightReport` (``.table()``, ``.to_dict()``, ``.ok``).
        ``kwargs`` (``train_data``, ``eval_data``, ``seed``) are passed to calibrating methods.
        """
        from .preflight import preflight

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
        seed: int = 0,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
    ) -> RunResult:
        """Run ``recipe`` on a deep copy of ``model``; the caller's model is never changed.

        Evaluates the baseline, runs each step and evaluates after it. A plugin that raises stops the
        run with a :class:`StepError` naming the step and plugin, chained to the original exception.
        With ``out_dir``, the model is checkpointed after every step and a rerun of the same recipe,
        seed and model resumes after the last finished step, with the same final result.
        """
        if not isinstance(model, nn.Module):
            raise TorchslimError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        recipe = self.recipe(recipe)
        self.check_targets(model, recipe)
        seed = recipe.seed if recipe.seed is not None else seed
        device = torch.device(device) if device is not None else _model_device(model)
        # Under torchrun: join the process group; a CUDA device becomes this rank's cuda:LOCAL_RANK.
        device = distributed.setup(device)
        example_inputs = example_inputs_from(example_inputs, eval_data, train_data)

        working = _private_copy(model).to(device)
        # Every rank starts from rank 0's model, also when each process initialised it at random.
        distributed.sync_model(working, "the input model", warn=False)
        context = RunContext(
            train_data=train_data, eval_data=eval_data, example_inputs=example_inputs,
            original_factory=lambda: _synced(_private_copy(model).to(device).eval().requires_grad_(False)),
            loss_fn=loss_fn, metric_fn=metric_fn, device=device, seed=seed,
            recipe=recipe, evaluation=recipe.evaluation,
        )
        context.runner = lambda m, raw: self._run_nested(m, raw, context)
        directions = dict(self.registry.directions())
        checkpointer = Checkpointer(out_dir, recipe, seed, working) if out_dir is not None else None
        resumed = checkpointer.resume(_private_copy(model).to(device)) if checkpointer else None
        if not distributed.same_on_every_rank(len(resumed[2]) if resumed else 0):
            raise TorchslimError(f"out_dir {str(out_dir)!r}: the ranks see different checkpoints; put out_dir on "
                                 f"a filesystem every node shares")
        if resumed is not None:
            working, baseline, records = resumed
        else:
            baseline = self._evaluate(working, recipe, context)
            records = []
        for index, step in enumerate(recipe.steps, start=1):
            if index <= len(records):
                continue
            with _reseeded_loader(train_data, seed + index):
                working, record = self._run_step(working, step, index, context)
            distributed.sync_model(working, f"step {index} ({step.label})")
            record.metrics = self._evaluate(working, recipe, context)
            records.append(record)
            log.info("step %d (%s) done in %.2fs", index, step.label, record.seconds)
            if checkpointer is not None and distributed.is_main():
                checkpointer.write(working, baseline, records)
        search_summary = None
        if recipe.search is not None:
            from .search import Searcher

            searcher = Searcher(self, recipe.search, context, list(recipe.evaluate),
                                Path(out_dir) if out_dir is not None else None)
            working, found, search_summary = searcher.run(
                working, records[-1].metrics if records else baseline,
                evaluate=lambda m: self._evaluate(m, recipe, context))
            for offset, record in enumerate(found, start=len(records) + 1):
                record.index = offset
            records += found
        working.eval()  # the result is for inference; fine-tune it further with .train()
        result = RunResult(model=working, recipe=recipe, baseline=baseline, steps=records,
                           directions=directions, seed=seed, search=search_summary)
        result.constraints = check_constraints(recipe, baseline, result.final, directions)
        return result

    def _run_step(self, model: nn.Module, step: Step, index: int, context: RunContext) -> tuple[nn.Module, StepRecord]:
        where = f"step {index} ({step.label})"
        info = self.registry.infos[step.method]
        owner = f"plugin {step.method!r} from {info.distribution}"
        context.step_index = index
        torch.manual_seed(context.seed + index)
        model.train()
        caller = self.registry.caller(step.stage, step.method)
        try:
            result = _call_with_timeout(lambda: caller(model=model, step=step, context=context), step.timeout)
        except StepTimeout:
            raise StepError(f"{where}: {owner} did not finish within timeout={step.timeout}s; "
                            f"raise the step's timeout or check the plugin") from None
        except Exception as exc:
            raise StepError(f"{where} failed in {owner}: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, nn.Module):
            result = StepResult(model=result)
        if not isinstance(result, StepResult) or not isinstance(result.model, nn.Module):
            raise StepError(
                f"{where}: {owner} returned {type(result).__name__}; a {step.stage} hook must return "
                f"torchslim.StepResult(model=...)"
            )
        bad = _first_non_finite(result.model)
        if bad is not None:
            raise StepError(f"{where}: {owner} returned a model whose {bad} holds NaN or inf values")
        timing = context.state.get("instrument", {}).get(index, {})
        options = step.options.model_dump(mode="json") if isinstance(step.options, BaseModel) else dict(step.options)
        record = StepRecord(
            index=index, label=step.label, options=options, metrics={},
            seconds=timing.get("seconds", 0.0), peak_memory_mb=timing.get("peak_memory_mb"),
            report=list(result.report), skipped=list(result.skipped), info=dict(result.info),
        )
        return result.model, record

    def _run_nested(self, model: nn.Module, raw: Any, context: RunContext) -> StepResult:
        step = raw if isinstance(raw, Step) else Step.model_validate(raw)
        where = f"step {context.step_index} nested ({step.label})"
        step.options = self._validate_options(step, where)
        result = self.registry.caller(step.stage, step.method)(model=model, step=step, context=context)
        if isinstance(result, nn.Module):
            result = StepResult(model=result)
        if not isinstance(result, StepResult):
            raise StepError(f"{where}: plugin {step.method!r} returned {type(result).__name__}, not StepResult")
        return result

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


def check_constraints(recipe: Recipe, baseline: dict[str, float], final: dict[str, float],
                      directions: dict[str, str]) -> list[dict[str, Any]]:
    """Evaluate the recipe's constraints; one dict per constraint with ``met`` and the figures."""
    rows = []
    for metric, allowed in recipe.constraints.max_drop.items():
        before, after = baseline.get(metric), final.get(metric)
        if before is None or after is None:
            rows.append({"constraint": f"max_drop.{metric}", "limit": allowed, "value": None, "met": False})
            continue
        worse = before - after if directions.get(metric, "higher") == "higher" else after - before
        rows.append({"constraint": f"max_drop.{metric}", "limit": allowed, "value": worse,
                     "met": worse <= allowed + 1e-12})
    for metric, allowed in recipe.constraints.max_ratio.items():
        before, after = baseline.get(metric), final.get(metric)
        ratio = None if not before or after is None else after / before
        rows.append({"constraint": f"max_ratio.{metric}", "limit": allowed, "value": ratio,
                     "met": ratio is not None and ratio <= allowed + 1e-12})
    return rows


def _private_copy(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with ``model``, parametrization classes included.

    ``copy.deepcopy`` of a parametrized module shares torch's generated ``Parametrized*`` class with
    the original, so finalizing masks on the copy would break the caller's model.
    """
    from .io import own_parametrized_classes

    clone = copy.deepcopy(model)
    own_parametrized_classes(clone)
    return clone


class StepTimeout(Exception):
    """A step ran past its timeout."""


def _call_with_timeout(call: Any, timeout: float | None) -> Any:
    """Run ``call()``; with a timeout, in a daemon thread abandoned (with its copy) when it hangs."""
    if timeout is None:
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="torchslim-step", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise StepTimeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


@contextlib.contextmanager
def _reseeded_loader(loader: Any, seed: int) -> Iterator[None]:
    """Make a step's data order depend only on (seed, step), so resumed runs match uninterrupted ones.

    The loader's own generators are restored afterwards: the user's objects are left as they were.
    """
    generators = []
    for holder in (loader, getattr(loader, "sampler", None)):
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g, _ in generators):
            generators.append((gen, gen.get_state()))
    for gen, _ in generators:
        gen.manual_seed(seed)
    try:
        yield
    finally:
        for gen, state in generators:
            gen.set_state(state)


def _synced(model: nn.Module) -> nn.Module:
    """``model`` holding rank 0's values on every rank (itself in a single process)."""
    distributed.sync_model(model, "the original model", warn=False)
    return model


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _first_non_finite(model: nn.Module) -> str | None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
