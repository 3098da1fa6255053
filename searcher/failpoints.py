"""Crash points and storage failpoints for fault tests.

``RUNG_CRASH_AT=<point>:<n>`` makes the searcher exit at once, as ``kill -9`` would (no
cleanup, no flush), the n-th time it reaches ``<point>``. Points, in the order a worker
event goes through them: ``consumed`` (decoded, nothing written), ``appended`` (in the
log, nothing published), ``published`` (published, not acknowledged). And
``overtaken``: a decision's record is durable, and before its commands go out the
searcher waits until a later input's record is durable too (applied meanwhile, as inputs
are while a decision is published), then exits: the later record must make a restart
send the earlier decision. Unset in production, where each check is one dictionary
lookup.

``RUNG_FAIL_FSYNC_AT=<n>`` makes the n-th fsync of an event log (counted from the
searcher's start) fail with EIO, as a dying disk would: the searcher must stop without
acknowledging anything more (fail-stop).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import time
from collections.abc import Callable

__all__ = ["CRASH_ENV", "FSYNC_FAILURE_ENV", "crash_once", "crash_point", "fsync_failure_point"]

CRASH_ENV = "RUNG_CRASH_AT"
FSYNC_FAILURE_ENV = "RUNG_FAIL_FSYNC_AT"
_counts: dict[str, int] = {}


def _reached(name: str) -> bool:
    """Count one more time at ``name``; True from the time ``RUNG_CRASH_AT`` names on."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    _counts[name] = _counts.get(name, 0) + 1
    return _counts[name] >= int(nth or 1)


def crash_point(name: str) -> None:
    if _reached(name):
        os._exit(137)


async def crash_once(name: str, ready: Callable[[], bool], *, within_s: float = 30.0) -> None:
    """At the point ``RUNG_CRASH_AT`` names: wait (the rest of the searcher going on)
    until ``ready()`` holds, or ``within_s`` seconds have passed, then say which on
    stderr (``crash point <name>: ready`` or ``: timed out``, for the test to check) and
    exit as ``kill -9`` would."""
    if not _reached(name):
        return
    deadline = time.monotonic() + within_s
    while not ready() and time.monotonic() < deadline:  # noqa: ASYNC110 (a failpoint)
        await asyncio.sleep(0.005)
    sys.stderr.write(f"crash point {name}: {'ready' if ready() else 'timed out'}\n")
    sys.stderr.flush()
    os._exit(137)


def fsync_failure_point() -> None:
    """Raise EIO at the fsync that ``RUNG_FAIL_FSYNC_AT`` names."""
    nth = os.environ.get(FSYNC_FAILURE_ENV)
    if not nth:
        return
    _counts["fsync"] = _counts.get("fsync", 0) + 1
    if _counts["fsync"] == int(nth):
        raise OSError(errno.EIO, f"injected by {FSYNC_FAILURE_ENV}={nth}")
