"""The pydantic base every torchslim settings and file schema shares: unknown fields are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown fields, so a misspelt key is named instead of ignored."""

    model_config = ConfigDict(extra="forbid")
