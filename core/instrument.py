"""Wrapper hook implementations that time every stage call and record its peak memory."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any, Generator

import torch

from .hookspecs import hookimpl

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_kib(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory() -> float | None:
    """Reset the process's peak-RSS counter where the OS allows it; return the current RSS in MiB."""
    try:
        _CLEAR_REFS.write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss = _rss_kib("VmRSS")
    return rss / 1024 if rss is not None else None


def peak_memory_mb() -> float | None:
    """Peak resident memory of the process in MiB since the last :func:`reset_peak_memory`."""
    peak = _rss_kib("VmHWM")
    if peak is not None:
        return peak / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024


class Instrument:
    """Records wall time and peak memory above the start of every stage call.

    Results land in ``context.state["instrument"][step_index]`` as ``{"seconds", "peak_memory_mb"}``;
    the engine copies them into the run report.
    """

    def _around(self, context: Any) -> Generator[None, Any, Any]:
        start_rss = reset_peak_memory()
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            seconds = time.perf_counter() - start
            peak = peak_memory_mb()
            extra = None if peak is None or start_rss is None else max(0.0, peak - start_rss)
            context.state.setdefault("instrument", {})[context.step_index] = {
                "seconds": seconds, "peak_memory_mb": extra,
            }

    @hookimpl(wrapper=True)
    def compress(self, model, step, context):
        return (yield from self._around(context))

    @hookimpl(wrapper=True)
    def accelerate(self, model, step, context):
        return (yield from self._around(context))

    @hookimpl(wrapper=True)
    def finetune(self, model, step, context):
        return (yield from self._around(context))
