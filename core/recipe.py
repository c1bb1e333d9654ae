"""Recipes: the validated description of what a run does (steps, evaluation, constraints).

A recipe comes from a dict, YAML or JSON. Each step is written as ``{stage: {method: NAME, ...}}``;
everything in the mapping except ``method`` and ``targets`` is the method's options, validated later
against the method plugin's ``Options`` model by :meth:`torchslim.Engine.validate`::

    steps:
      - compress:   {method: magnitude, sparsity: 0.8, scope: global}
      - accelerate: {method: svd, mac_ratio: 0.5, targets: {include: ["layer*.conv*"]}}
      - finetune:   {method: sgd, epochs: 3, lr: 0.01}
    evaluate: [accuracy, macs, params, size, latency]
    constraints: {max_drop: {accuracy: 0.01}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError
from .hookspecs import STAGES
from .schema import StrictModel

Stage = Literal[STAGES]  # type: ignore[valid-type]  # the stages the contract defines



class Targets(StrictModel):
    """Which modules a step touches: name globs and module types, each optional.

    ``include``/``exclude`` are :mod:`fnmatch` globs on qualified module names (``layer1.0.conv1``);
    ``types`` are class names (``Conv2d``, ``Linear``) matched against the module's class and its
    bases. Empty ``types`` means the method's own default types.
    """

    include: list[str] = Field(default_factory=lambda: ["*"], description="globs of module names to touch")
    exclude: list[str] = Field(default_factory=list, description="globs of module names to leave alone")
    types: list[str] = Field(default_factory=list,
                             description="module class names to touch (default: the method's own types)")

    @field_validator("include", "exclude", "types", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Step(StrictModel):
    """One recipe step: a stage, the method (plugin name) that runs it, its options and targets."""

    stage: Stage = Field(description="compress, accelerate, finetune or deploy (the key of the step mapping)")
    method: str = Field(description="name of the installed method plugin that runs the step")
    options: Any = Field(default_factory=dict,
                         description="the method's options (the other keys of the step mapping)")
    targets: Targets = Field(default_factory=Targets, description="which modules the step touches")
    timeout: float | None = Field(
        None, gt=0, description="seconds the step may take before the run stops with an error"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        """Accept ``{stage: {method: ..., **options}}`` as well as the explicit form."""
        if isinstance(data, dict) and len(data) == 1:
            (stage, body), = data.items()
            if stage in STAGES or (stage not in cls.model_fields and isinstance(body, dict)):
                if not isinstance(body, dict):
                    raise ValueError(f"the body of stage {stage!r} must be a mapping with a 'method'")
                body = dict(body)
                if "method" not in body:
                    raise ValueError(f"stage {stage!r} names no 'method'")
                method = body.pop("method")
                targets = body.pop("targets", {})
                out = {"stage": stage, "method": method, "targets": targets, "options": body}
                if "timeout" in body:
                    out["timeout"] = body.pop("timeout")
                return out
        return data

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.method}"


class Constraints(StrictModel):
    """Conditions the final model must meet, relative to the baseline.

    ``max_drop``: metric -> largest allowed worsening (absolute; for a higher-is-better metric a drop,
    for a lower-is-better one a rise). ``max_ratio``: metric -> largest allowed final/baseline ratio
    (``{macs: 0.5}`` means "at least halve the MACs").
    """

    max_drop: dict[str, float] = Field(default_factory=dict,
                                       description="metric -> largest allowed worsening vs the baseline")
    max_ratio: dict[str, float] = Field(default_factory=dict,
                                        description="metric -> largest allowed final/baseline ratio")

    @field_validator("max_drop")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, drop in value.items():
            if drop < 0:
                raise ValueError(f"max_drop.{name}={drop} must be >= 0")
        return value

    @field_validator("max_ratio")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, ratio in value.items():
            if ratio <= 0:
                raise ValueError(f"max_ratio.{name}={ratio} must be > 0")
        return value


class Evaluation(StrictModel):
    """Settings shared by evaluators."""

    latency_runs: int = Field(20, ge=1, description="timed runs; the median is reported")
    latency_warmup: int = Field(3, ge=0, description="untimed runs before timing")
    threads: int | None = Field(None, ge=1, description="torch threads while timing (default: current)")
    max_eval_batches: int | None = Field(None, ge=1, description="cap on eval batches (default: all)")
    output: str | None = Field(
        None, min_length=1,
        description="which model output accuracy and the default loss read: a key or attribute such as "
                    "'logits' or 'last_hidden_state' (dicts, transformers ModelOutput); default: the tensor, "
                    "its 'logits', or a tuple's first item. Engine.run(output_fn=...) takes a callable instead")



class Search(StrictModel):
    """Automatic strategy search: meet ``target`` at the least predicted loss, then fine-tune and check.

    ``methods`` are step templates whose strength knob (the ``Options`` field marked
    ``json_schema_extra={"strength": True}``) the search sets per layer.
    """

    target: dict[str, float] = Field(
        description="one lower-is-better metric (or the evaluator producing it) and its wanted final/baseline "
                    "ratio, e.g. {macs: 0.5}; any installed evaluator's metric, e.g. macs, params, nonzeros, "
                    "size_bytes (size), latency_ms (latency)"
    )
    methods: list[Step] = Field(min_length=1, description="step templates to allocate per layer")
    grid: list[float] | None = Field(None, description="strengths tried per layer (default: 8 across the knob)")
    calibration_batches: int = Field(4, ge=1, description="eval batches used to score each layer's sensitivity")
    metric: str | None = Field(None, description="metric scored for sensitivity (default: the first max_drop metric)")
    finetune: Step | None = Field(None, description="fine-tuning step run after each allocation")
    retries: int = Field(2, ge=0, le=10, description="extra attempts when a constraint fails")
    backoff: Literal["target", "finetune", "both"] = Field(
        "target", description="on failure: weaken the target, fine-tune longer, or both"
    )
    backoff_factor: float = Field(0.5, gt=0, lt=1, description="weaker target = t + (1 - t) * factor")
    cache_dir: str | None = Field(None, description="sensitivity cache folder (default: ~/.cache/torchslim)")
    plot: bool = Field(True, description="write sensitivity and attempt plots when matplotlib is installed")
    runtime: str | None = Field(
        None, description="measure the target's cost (latency_ms, size_bytes) on each candidate deployed with this "
                          "deploy method (e.g. onnxruntime), so the search picks layers that are fast where the model "
                          "will run; default: the eager PyTorch model")
    runtime_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the runtime, e.g. {precision: int8}")

    @field_validator("target")
    @classmethod
    def _one_target(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) != 1:
            raise ValueError(f"give exactly one target metric, got {sorted(value) or 'none'}")
        (name, ratio), = value.items()
        if not 0 < ratio <= 1:
            raise ValueError(f"target {name}={ratio} must be in (0, 1]")
        return {name: ratio}

    @field_validator("grid")
    @classmethod
    def _sorted_grid(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not value:
            raise ValueError("grid must not be empty")
        return sorted(set(value)) if value else value


class Recipe(StrictModel):
    """A whole run: ordered steps, the evaluators to run, and constraints on the result."""

    name: str | None = Field(None, description="a name for reports")
    description: str = Field("", description="free text shown with strategies")
    steps: list[Step] = Field(default_factory=list, description="the steps, run in order")
    evaluate: list[str] | None = Field(
        None, description="evaluators run on the baseline and after every step (default: every installed "
                          "evaluator that runs by default)")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="settings shared by evaluators")
    constraints: Constraints = Field(default_factory=Constraints,
                                     description="conditions the final model must meet")
    search: Search | None = Field(None, description="automatic per-layer strength search (after the steps)")
    seed: int | None = Field(None, description="random seed; overrides Engine.run(seed=...)")
    bake_masks: bool = Field(
        False, description="return plain modules with the pruning masks baked in (the zeros stay; no "
                           "parametrizations left). Off: masks stay, so zeros hold through further fine-tuning")

    @model_validator(mode="after")
    def _deploy_last(self) -> "Recipe":
        deploys = [i for i, step in enumerate(self.steps) if step.stage == "deploy"]
        if len(deploys) > 1:
            raise ValueError(f"steps {', '.join(str(i + 1) for i in deploys)} are deploy steps; a recipe has at "
                             f"most one, as its last step")
        if deploys and deploys[0] != len(self.steps) - 1:
            after = self.steps[deploys[0] + 1]
            raise ValueError(f"step {deploys[0] + 1} is a deploy step but step {deploys[0] + 2} ({after.label}) "
                             f"follows it; deploy turns the model into a runtime artifact, so it must come last")
        if deploys and self.search is not None:
            raise ValueError("a recipe with a search block cannot deploy: the search runs after the steps; "
                             "deploy its result in a second recipe")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        """Validate a recipe dictionary, raising :class:`RecipeError` with readable messages."""
        if isinstance(data, Recipe):
            return data
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, data)) from None

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "Recipe":
        """Read a recipe from a YAML file path, or from YAML text when no such file exists."""
        import yaml

        text = _read_if_path(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe is not valid YAML: {exc}") from None
        return cls.from_dict(data or {})

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "Recipe":
        """Read a recipe from a JSON file path or JSON text."""
        text = _read_if_path(path_or_text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        """Read a ``.yaml``/``.yml`` or ``.json`` recipe file."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        if path.suffix.lower() == ".json":
            return cls.from_json(path)
        return cls.from_yaml(path)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain, JSON-serialisable dictionary in the shorthand step form."""
        data = self.model_dump(mode="json", exclude={"steps", "search"})
        data["steps"] = [step_to_dict(step) for step in self.steps]
        if self.search is not None:
            search = self.search.model_dump(mode="json", exclude={"methods", "finetune"}, exclude_defaults=True)
            search["target"] = self.search.target
            search["methods"] = [step_to_dict(step) for step in self.search.methods]
            if self.search.finetune is not None:
                search["finetune"] = step_to_dict(self.search.finetune)
            data["search"] = search
        return data


def step_to_dict(step: Step) -> dict[str, Any]:
    """A step in the ``{stage: {method: ..., **options}}`` form."""
    options = step.options
    if isinstance(options, BaseModel):
        options = options.model_dump(mode="json", exclude_defaults=True)
    body: dict[str, Any] = {"method": step.method, **dict(options)}
    targets = step.targets.model_dump(exclude_defaults=True)
    if targets:
        body["targets"] = targets
    if step.timeout is not None:
        body["timeout"] = step.timeout
    return {step.stage: body}


def _read_if_path(path_or_text: str | Path) -> str:
    if isinstance(path_or_text, Path):
        if not path_or_text.is_file():
            raise RecipeError(f"recipe file {str(path_or_text)!r} does not exist")
        return path_or_text.read_text()
    text = str(path_or_text)
    if "\n" not in text and len(text) < 1024 and Path(text).is_file():
        return Path(text).read_text()
    if "\n" not in text and text.endswith((".yaml", ".yml", ".json")):
        raise RecipeError(f"recipe file {text!r} does not exist")
    return text


def format_validation_error(exc: ValidationError, data: Any, prefix: str = "") -> str:
    """Turn a pydantic error into lines naming the step, the field, the bad value and the rule."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = prefix
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            where = describe_step(data, loc[1])
            loc = loc[2:]
            # the shorthand validator's own errors carry the stage name as a location part
            loc = [part for part in loc if part not in STAGES and part != "options"]
        field = ".".join(str(part) for part in loc) or ("recipe" if not where else "(value)")
        bad = err.get("input")
        shown = "" if isinstance(bad, dict) else f"={bad!r}"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a known field; remove it or check its spelling"
        elif err["type"] == "literal_error" and field == "stage":
            msg = f"must be one of {', '.join(STAGES)}"
        lines.append(f"{where + ': ' if where else ''}{field}{shown}: {msg}")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def describe_step(data: Any, index: int) -> str:
    """``step 2 (accelerate/svd)`` for the 0-based ``index`` of a raw recipe dict, as well as known."""
    label = ""
    try:
        raw = data["steps"][index]
        if isinstance(raw, dict) and len(raw) == 1:
            (stage, body), = raw.items()
            method = body.get("method", "?") if isinstance(body, dict) else "?"
            label = f" ({stage}/{method})"
        elif isinstance(raw, dict):
            label = f" ({raw.get('stage', '?')}/{raw.get('method', '?')})"
    except (KeyError, IndexError, TypeError):
        pass
    return f"step {index + 1}{label}"
