"""What the benchmark scripts share: the thread count they time with, writing their JSON, MiniLM's wrapper, the
resident-set sampler that gives a step's peak memory."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from torch import nn


def bench_threads(default: int) -> int:
    """Torch threads to time with: the runner's ``OMP_NUM_THREADS`` when set, else the benchmark's default.

    The test suite runs the ``--quick`` smoke runs with ``OMP_NUM_THREADS=1``; forcing two threads there
    made them collapse whenever anything else ran on the machine.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")


class SentenceEncoder(nn.Module):
    """A SentenceTransformer taking tokenizer outputs as keyword tensors and returning embeddings."""

    def __init__(self, st: nn.Module) -> None:
        super().__init__()
        self.st = st

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        return self.st(features)["sentence_embedding"]


class RssSampler:
    """The resident set's peak above its size at entry, sampled every 5 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.base = 0
        self.stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "RssSampler":
        self.base = self.peak = self.rss()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20
