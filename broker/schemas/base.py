"""The base of every message body."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Message"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
