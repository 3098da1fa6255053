"""The base of every message body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Message", "without_none"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def without_none(data: Any, *fields: str) -> Any:
    """``data`` (a message as serialized) without those of ``fields`` that are None: a
    field added later goes on the wire only when set, so a peer of the version before
    it, whose messages forbid unknown fields, still takes the message."""
    if isinstance(data, dict):
        for name in fields:
            if data.get(name, 0) is None:
                del data[name]
    return data
