"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    """Base of every config section: unknown keys refused, numbers finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
