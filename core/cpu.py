"""What this machine's CPU is: its model name and feature flags, read once from ``/proc/cpuinfo``.

Timings are keyed by it (:mod:`torchslim.latency_table`), and runtimes choose their int8 form by it
(without VNNI, x86's U8S8 byte products saturate, so ONNX Runtime's ``reduce_range: auto`` turns on).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

#: CPU flags (as /proc/cpuinfo names them) of the int8 dot-product instructions that do not saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (empty where there is none, e.g. macOS, Windows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            info.setdefault(key, value)
    return info


def cpu_flags() -> set[str]:
    """This CPU's feature flags (empty when they cannot be read)."""
    return set(cpu_info().get("flags", "").split())


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the CPU (or ``flags``) has a VNNI int8 dot product; False when it cannot tell."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in VNNI_FLAGS)
