"""Checkpoints after every step, so a rerun of the same command resumes where a crash stopped it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..results import StepRecord
from .atomic import write_json_atomic
from .reader import load
from .writer import save

log = logging.getLogger("torchslim")
PROGRESS = "progress.json"


class Checkpointer:
    """Keeps the model after the last finished step and the run's records in ``out_dir``.

    A checkpoint belongs to one (recipe, seed, input model) triple; a rerun with anything different
    starts afresh instead of resuming someone else's run.
    """

    def __init__(self, out_dir: str | Path, recipe: Any, seed: int, model_fingerprint: str) -> None:
        self.root = Path(out_dir) / "checkpoints"
        payload = json.dumps({"recipe": recipe.to_dict(), "seed": seed, "model": model_fingerprint},
                             sort_keys=True, default=str)
        self.key = hashlib.sha256(payload.encode()).hexdigest()

    def resume(self, base_model: nn.Module) -> tuple[nn.Module, dict[str, float], list[StepRecord]] | None:
        """The model, baseline and records of the last finished step, or None to start afresh."""
        progress_path = self.root / PROGRESS
        if not progress_path.is_file():
            return None
        progress = json.loads(progress_path.read_text())
        if progress.get("key") != self.key:
            log.warning("checkpoints in %s belong to another run (recipe, seed or model differ); starting afresh",
                        self.root)
            return None
        model = load(self.root / progress["checkpoint"], base_model=base_model)
        records = [StepRecord(**{**r, "skipped": [tuple(s) for s in r["skipped"]]}) for r in progress["records"]]
        log.info("resuming after step %d from %s", len(records), self.root)
        return model, progress["baseline"], records

    def write(self, model: nn.Module, baseline: dict[str, float], records: list[StepRecord]) -> None:
        """Save the model after the latest step, then atomically point progress.json at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step-{len(records):03d}"
        save(model, self.root / name, metrics={"baseline": baseline})
        write_json_atomic(self.root / PROGRESS, {
            "key": self.key, "checkpoint": name, "baseline": baseline,
            "records": [asdict(r) for r in records],
        })
        for old in self.root.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
