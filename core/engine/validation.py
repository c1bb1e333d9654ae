"""Recipe validation against what is installed: methods, options, evaluators, constraints, targets."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError
from torch import nn

from ..errors import DataError, PluginError, RecipeError, TorchslimError
from ..recipe import Recipe, Step, Targets, format_validation_error
from ..registry import PluginRegistry
from ..targets import WEIGHT_LAYERS, require_selection


def validate_recipe(registry: PluginRegistry, recipe: Recipe) -> Recipe:
    """Check every step's method and options and every evaluator; return a copy with typed options."""
    recipe = recipe.model_copy(deep=True)
    problems: list[str] = []
    steps = [(f"step {index + 1}", step) for index, step in enumerate(recipe.steps)]
    if recipe.search is not None:
        steps += [(f"search.methods[{i + 1}]", s) for i, s in enumerate(recipe.search.methods)]
        if recipe.search.finetune is not None:
            steps.append(("search.finetune", recipe.search.finetune))
    for label, step in steps:
        where = f"{label} ({step.label})"
        try:
            step.options = validate_options(registry, step, where)
        except (RecipeError, PluginError) as exc:
            problems.append(str(exc) if str(exc).startswith(where) else f"{where}: {exc}")
    if recipe.evaluate is None:  # derived from what is installed: blocking an evaluator drops it here
        recipe.evaluate = registry.default_evaluators()
    for name in recipe.evaluate:
        try:
            registry.get("evaluate", name)
        except PluginError as exc:
            problems.append(f"evaluate: {exc}")
    produced = registry.directions()
    for kind, limits in (("max_drop", recipe.constraints.max_drop), ("max_ratio", recipe.constraints.max_ratio)):
        for metric in limits:
            if metric not in produced:
                problems.append(
                    f"constraints.{kind}.{metric}: no installed evaluator produces metric {metric!r}; "
                    f"known metrics: {', '.join(sorted(produced))}"
                )
    if recipe.search is not None:
        problems += _resolve_search_target(registry, recipe)
        problems += _check_search_runtime(registry, recipe)
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
    return recipe


def _resolve_search_target(registry: PluginRegistry, recipe: Recipe) -> list[str]:
    """Turn ``search.target``'s key into a metric an installed evaluator returns, lower being better."""
    (name, ratio), = recipe.search.target.items()
    directions = registry.directions()
    metric = name
    if name not in directions:
        producer = registry.producer(name)
        metric = next(iter(getattr(registry.infos[producer].obj, "metrics", {}))) if producer else None
    if metric is None:
        lower = sorted(m for m, d in directions.items() if d == "lower")
        return [f"search.target: no installed evaluator returns {name!r}; lower-is-better metrics: "
                f"{', '.join(lower) or 'none'}"]
    if directions[metric] != "lower":
        return [f"search.target: {metric!r} is higher-is-better; a target is a cost to cut, i.e. a lower-is-better "
                f"metric (put a floor on {metric!r} under constraints.max_drop instead)"]
    recipe.search.target = {metric: ratio}
    return []


def _check_search_runtime(registry: PluginRegistry, recipe: Recipe) -> list[str]:
    """``search.runtime`` names an installed deploy method and its options fit it."""
    if recipe.search.runtime is None:
        return []
    step = Step(stage="deploy", method=recipe.search.runtime, options=dict(recipe.search.runtime_options))
    try:
        options = validate_options(registry, step, "search.runtime")
    except (RecipeError, PluginError) as exc:
        text = str(exc)
        return [text if text.startswith("search.runtime") else f"search.runtime: {text}"]
    recipe.search.runtime_options = (options.model_dump(exclude_unset=True) if isinstance(options, BaseModel)
                                     else dict(options))
    return []


def validate_options(registry: PluginRegistry, step: Step, where: str) -> Any:
    """``step.options`` validated against the method's ``Options`` model (unknown keys named)."""
    options_model = registry.options_model(step.stage, step.method)
    raw = step.options
    if options_model is not None and isinstance(raw, options_model):
        return raw  # already validated (a nested or search step reusing a recipe's options)
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(exclude_unset=True)
    if options_model is None:
        if raw:
            raise RecipeError(f"{where}: method {step.method!r} takes no options, got {sorted(raw)}")
        return raw
    known = accepted_keys(options_model)
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


def accepted_keys(options_model: type[BaseModel]) -> set[str]:
    """The keys an Options model accepts: field names, aliases and validation aliases (old spellings)."""
    keys = set()
    for name, field in options_model.model_fields.items():
        keys.add(name)
        if field.alias:
            keys.add(field.alias)
        choices = field.validation_alias
        if isinstance(choices, str):
            keys.add(choices)
        elif isinstance(choices, AliasChoices):
            keys.update(choice for choice in choices.choices if isinstance(choice, str))
    return keys


def check_targets(registry: PluginRegistry, model: nn.Module, recipe: Recipe) -> None:
    """Raise a :class:`RecipeError` for any step whose explicit targets select no module."""
    for index, step in enumerate(recipe.steps):
        if step.targets == Targets():
            continue
        plugin = registry.get(step.stage, step.method)
        defaults = getattr(plugin, "default_types", WEIGHT_LAYERS)
        try:
            require_selection(model, step.targets, defaults, f"step {index + 1} ({step.label})")
        except TorchslimError as exc:
            raise RecipeError(str(exc)) from None


#: What each kind of input is called on the command line, for the error message.
_CLI = {"train_data": "--data", "eval_data": "--data", "example_inputs": "--data or --input-shape"}


def check_inputs(registry: PluginRegistry, recipe: Recipe, given: dict[str, bool]) -> None:
    """Raise a :class:`DataError` before any work when a step or the search lacks the data it needs.

    ``given`` says which of ``train_data``, ``eval_data`` and ``example_inputs`` the run has. A finetune
    step needs ``train_data``; a method declares more in its ``needs`` attribute; the search scores
    layers on ``eval_data``.
    """
    problems = []
    for index, step in enumerate(recipe.steps, start=1):
        needs = set(getattr(registry.get(step.stage, step.method), "needs", ()) or ())
        if step.stage == "finetune":
            needs.add("train_data")
        for name in sorted(needs):
            if not given.get(name):
                problems.append(f"step {index} ({step.label}) needs {name}, but none was given; pass {name}=... "
                                f"to Engine.run (on the command line: {_CLI[name]})")
    if recipe.search is not None and not given.get("eval_data"):
        problems.append("the search scores each layer on eval_data, but none was given; pass eval_data=... to "
                        "Engine.run (on the command line: --data)")
    if problems:
        raise DataError("\n".join(problems))
