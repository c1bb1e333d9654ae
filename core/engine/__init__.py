"""The engine: :class:`Engine` validates recipes (:mod:`.validation`), runs steps (:mod:`.steps`) on one
copy of the model, lends the original read-only (:mod:`.original`) and measures every stage."""

from __future__ import annotations

from ..constraints import check_constraints
from .engine import Engine

__all__ = ["Engine", "check_constraints"]
