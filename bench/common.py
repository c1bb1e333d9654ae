"""What every benchmark script shares: the thread count it times with."""

from __future__ import annotations

import os


def bench_threads(default: int) -> int:
    """Torch threads to time with: the runner's ``OMP_NUM_THREADS`` when set, else the benchmark's default.

    The test suite runs the ``--quick`` smoke runs with ``OMP_NUM_THREADS=1``; forcing two threads there
    made them collapse whenever anything else ran on the machine.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else default
