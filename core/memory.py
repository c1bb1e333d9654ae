"""Peak resident memory of the process: reset it before a piece of work, read it after."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

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
