"""Where torchslim keeps what it measured once and reuses: sensitivities, per-machine layer timings."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$TORCHSLIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchslim``, else ``~/.cache/torchslim``."""
    explicit = os.environ.get("TORCHSLIM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torchslim"
