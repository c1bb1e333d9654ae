"""Running one step: call the named plugin's hook (with a timeout), check what it returned, record it."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from ..context import RunContext
from ..errors import StepError
from ..recipe import Step
from ..registry import PluginRegistry
from ..results import StepRecord, StepResult
from .interface import first_difference, interface_of


class StepTimeout(Exception):
    """A step ran past its timeout."""


def run_step(registry: PluginRegistry, model: nn.Module, step: Step, index: int,
             context: RunContext) -> tuple[nn.Module, StepRecord]:
    """Run recipe step ``index`` on ``model``; return the model to continue with and its record."""
    where = f"step {index} ({step.label})"
    info = registry.infos[step.method]
    owner = f"plugin {step.method!r} from {info.distribution}"
    context.step_index = index
    torch.manual_seed(context.seed + index)
    model.train()
    caller = registry.caller(step.stage, step.method)
    start = time.perf_counter()
    try:
        result = call_with_timeout(lambda: caller(model=model, step=step, context=context), step.timeout)
    except StepTimeout:
        raise StepError(f"{where}: {owner} did not finish within timeout={step.timeout}s; "
                        f"raise the step's timeout or check the plugin") from None
    except Exception as exc:
        raise StepError(f"{where} failed in {owner}: {type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - start
    result = checked_result(result, where, owner, step.stage)
    timing = context.state.get("timing", {}).get(index, {})  # the timing plugin, when installed
    options = step.options.model_dump(mode="json") if isinstance(step.options, BaseModel) else dict(step.options)
    record = StepRecord(
        index=index, label=step.label, options=options, metrics={},
        seconds=timing.get("seconds", elapsed), peak_memory_mb=timing.get("peak_memory_mb"),
        report=list(result.report), skipped=list(result.skipped), info=dict(result.info),
        warnings=list(result.warnings),
    )
    return result.model, record


def run_nested(registry: PluginRegistry, model: nn.Module, raw: Any, context: RunContext,
               validate: Any) -> StepResult:
    """Run a step a plugin asks for (``context.run_step``), e.g. fine-tuning between pruning rounds."""
    step = raw if isinstance(raw, Step) else Step.model_validate(raw)
    where = f"step {context.step_index} nested ({step.label})"
    step.options = validate(step, where)
    result = registry.caller(step.stage, step.method)(model=model, step=step, context=context)
    return checked_result(result, where, f"plugin {step.method!r}", step.stage)


def checked_result(result: Any, where: str, owner: str, stage: str) -> StepResult:
    """``result`` when it is a :class:`StepResult` holding a finite ``nn.Module``; else a :class:`StepError`.

    A bare ``nn.Module`` is refused too: a step says what it did (report, skipped layers, info) through
    its StepResult, and a plugin that forgets to wrap its model would also forget to say that.
    """
    fix = f"a {stage} hook must return torchslim.StepResult(model=...)"
    if isinstance(result, nn.Module):
        raise StepError(f"{where}: {owner} returned a bare {type(result).__name__} module; {fix}, e.g. "
                        f"return torchslim.StepResult(model=model, report=rows, skipped=skipped)")
    if not isinstance(result, StepResult):
        raise StepError(f"{where}: {owner} returned {type(result).__name__}; {fix}")
    if not isinstance(result.model, nn.Module):
        raise StepError(f"{where}: {owner} returned StepResult(model={type(result.model).__name__}), which holds "
                        f"no model; {fix} with the model to continue with (the input model when unchanged)")
    bad = first_non_finite(result.model)
    if bad is not None:
        raise StepError(f"{where}: {owner} returned a model whose {bad} holds NaN or inf values")
    return result


def check_interface(plugin: Any, model: nn.Module, reference: Any, context: RunContext, where: str,
                    owner: str) -> Any:
    """Compare the model's outputs on the example inputs with ``reference``; return the new reference.

    A method that changes the outputs on purpose declares ``changes_outputs = True`` and is not checked.
    """
    try:
        now = interface_of(model, context.example_inputs, context.device)
    except Exception as exc:  # noqa: BLE001 - whatever breaks here, the step's model broke it
        raise StepError(f"{where}: {owner} returned a model that fails on the example inputs in eval mode: "
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    if reference is None or now is None or getattr(plugin, "changes_outputs", False):
        return now
    difference = first_difference(reference, now)
    if difference is not None:
        raise StepError(f"{where}: {owner} changed the model's outputs on the example inputs ({difference}); a "
                        f"method must keep the model's interface, or declare changes_outputs = True when "
                        f"changing it is its purpose")
    return now


def call_with_timeout(call: Any, timeout: float | None) -> Any:
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


def first_non_finite(model: nn.Module) -> str | None:
    """The name of the first floating-point state-dict tensor holding NaN or inf, or None."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
