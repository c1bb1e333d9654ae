"""A per-machine table of measured layer timings: measured once, then reused, so decisions hold under load.

A keep-or-revert decision taken on a wall-clock measurement flips when the machine is busy: another
process steals a core, the faster candidate looks slower, and the same recipe, seed and data give a
different model. :class:`LatencyTable` stores each measurement under a key made of the machine (CPU
model, torch version, thread count), the two modules compared (class and every constructor argument
that shapes their work) and the input's shape and dtype. The first run on a machine measures and
records; every later run, quiet or busy, reads the same figures and so takes the same decisions.
Changing the thread count, the torch version or the CPU measures afresh.

The file is JSON (``latency.json`` in :func:`torchslim.cache_dir.default_cache_dir`), written
atomically; delete it to re-measure. A corrupt file is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .cache_dir import default_cache_dir
from .cpu import cpu_info
from .io.atomic import write_json_atomic

log = logging.getLogger("torchslim")

#: Bumped when the meaning of a stored timing changes, so older tables are not reused.
TABLE_VERSION = 1

Timing = tuple[float, float]


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU's model name and a digest of its feature flags (names such as "AMD EPYC" span generations)."""
    info = cpu_info()
    if not info:
        return platform.processor() or platform.machine()
    flags = hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:8]
    return f"{info.get('model name', platform.machine())} (flags {flags})"


def machine_key() -> str:
    """What a timing depends on besides the modules: CPU model and features, torch version, thread count."""
    return f"{_cpu_model()}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def module_signature(module: nn.Module) -> str:
    """The module's class and its printed structure (every shape-giving argument), with parameter dtypes."""
    dtypes = sorted({str(p.dtype) for p in module.parameters()})
    return f"{type(module).__qualname__}:{module!r}:{','.join(dtypes)}"


def pair_key(before: nn.Module, after: nn.Module, x: torch.Tensor, runtime: str | None = None) -> str:
    """The table key of timing ``before`` against ``after`` on inputs shaped like ``x`` on this machine.

    ``runtime`` names the deploy method both were timed in (None: eager PyTorch, the keys of earlier tables).
    """
    parts = [machine_key(), module_signature(before), module_signature(after),
             f"{tuple(x.shape)}:{x.dtype}:{x.device.type}"]
    text = "\n".join(parts + ([f"runtime {runtime}"] if runtime else []))
    return hashlib.sha256(text.encode()).hexdigest()


class LatencyTable:
    """Timings of module pairs on this machine, read from and appended to one JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_cache_dir() / "latency.json"
        self.entries: dict[str, list[float]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, OSError) as error:
                log.warning("latency table %s is unreadable (%s); measuring afresh", self.path, error)
            else:
                if data.get("version") == TABLE_VERSION:
                    self.entries = data.get("timings", {})
        self.hits = 0
        self.measured = 0

    def pair(self, before: nn.Module, after: nn.Module, x: torch.Tensor,
             measure: Callable[[], Timing], runtime: str | None = None) -> Timing:
        """The stored ``(before_ms, after_ms)`` for this pair, input and runtime, else ``measure()``'s, recorded."""
        key = pair_key(before, after, x, runtime)
        stored = self.entries.get(key)
        if stored is not None:
            self.hits += 1
            return float(stored[0]), float(stored[1])
        timing = measure()
        self.measured += 1
        self.entries[key] = [float(timing[0]), float(timing[1])]
        self._write()
        return timing

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"version": TABLE_VERSION, "timings": self.entries})
        except OSError as error:  # a read-only cache folder costs reuse, not the run
            log.warning("cannot write the latency table %s (%s); timings are not reused", self.path, error)
