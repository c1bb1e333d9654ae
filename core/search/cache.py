"""The on-disk sensitivity cache: one JSON file per (model, data, methods, target), written atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..io.atomic import write_json_atomic

log = logging.getLogger("torchslim")


#: Bumped when cached sensitivity entries change meaning, so older caches are not reused.
CACHE_VERSION = 2


class SensitivityCache:
    """A JSON file of ``{knob_key: {strength: {"loss", "saving"}}}``, rewritten atomically per entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, dict[str, float]]] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("sensitivity cache %s is corrupt; recomputing", path)

    def get(self, key: str, strength: float) -> dict[str, float] | None:
        return self.data.get(key, {}).get(repr(float(strength)))

    def put(self, key: str, strength: float, value: dict[str, float]) -> None:
        self.data.setdefault(key, {})[repr(float(strength))] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


