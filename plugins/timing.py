"""The ``timing`` plugin: a wrapper around every stage call recording its wall time and peak memory.

It is an ordinary plugin (entry point ``timing``), listed by ``torchslim plugins`` and blockable with
``TORCHSLIM_DISABLE_PLUGINS=timing``; without it the run report shows no step times. Results land in
``context.state["timing"][step_index]`` as ``{"seconds", "peak_memory_mb"}`` (memory above the start).
"""

from __future__ import annotations

import time
from typing import Any, Generator

import torchslim
from torchslim.memory import peak_memory_mb, reset_peak_memory


class StepTiming:
    """Times every stage call (compress, accelerate, finetune, deploy) and records its peak memory."""

    name = "timing"

    def _around(self, context: Any) -> Generator[None, Any, Any]:
        start_rss = reset_peak_memory()
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            seconds = time.perf_counter() - start
            peak = peak_memory_mb()
            extra = None if peak is None or start_rss is None else max(0.0, peak - start_rss)
            context.state.setdefault("timing", {})[context.step_index] = {
                "seconds": seconds, "peak_memory_mb": extra,
            }

    @torchslim.hookimpl(wrapper=True)
    def compress(self, model, step, context):
        return (yield from self._around(context))

    @torchslim.hookimpl(wrapper=True)
    def accelerate(self, model, step, context):
        return (yield from self._around(context))

    @torchslim.hookimpl(wrapper=True)
    def finetune(self, model, step, context):
        return (yield from self._around(context))
