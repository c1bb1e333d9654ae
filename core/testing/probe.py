"""A wrapper plugin that watches every stage call of a check: the teacher, the input model, failures."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..engine import Engine
from ..hookspecs import hookimpl
from .snapshots import differences, model_snapshot

_PROBE_NAME = "torchslim.testing.probe"


class _Probe:
    """Wrapper plugin that watches one stage call: the teacher stays intact, the hook's return value."""
    def __init__(self, fail_after: bool = False) -> None:
        self.fail_after = fail_after
        self.results: list[Any] = []
        self.teacher_problems: list[str] = []

    def _around(self, model: Any, context: Any) -> Iterator[None]:
        teacher = context.original_model
        before = model_snapshot(teacher) if teacher is not None else None
        try:
            result = yield
        finally:
            if before is not None:
                self.teacher_problems += differences(before, model_snapshot(teacher))
        self.results.append(result)
        if self.fail_after:
            # a failure after the plugin changed the working model: the user's model must not show it
            raise RuntimeError("torchslim.testing: failure injected after the plugin's hook returned")
        return result


def _probe_class() -> type:

    class Probe(_Probe):
        @hookimpl(wrapper=True)
        def compress(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

        @hookimpl(wrapper=True)
        def accelerate(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

        @hookimpl(wrapper=True)
        def finetune(self, model, step, context):  # noqa: D102
            return (yield from self._around(model, context))

    return Probe


@contextlib.contextmanager
def _probing(engine: "Engine", fail_after: bool = False) -> Iterator[_Probe]:
    probe = _probe_class()(fail_after=fail_after)
    engine.registry.pm.register(probe, name=_PROBE_NAME)
    try:
        yield probe
    finally:
        engine.registry.pm.unregister(probe)
