"""Cleanup that must finish: run to its end however many cancellations come."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["to_its_end"]


async def to_its_end(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end however many cancellations come meanwhile. Then raise the
    first of them, if any came (the caller's cancellation is delayed, never lost; the
    work's own error is then dropped), else the work's own error, if any."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        with contextlib.suppress(Exception):  # the work's own error: raised below
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError as exc:
                cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller gets
        raise cancelled
    task.result()
