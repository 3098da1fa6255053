"""Crash points and storage failpoints for fault tests.

``RUNG_CRASH_AT=<point>:<n>`` makes the searcher exit at once, as ``kill -9`` would (no
cleanup, no flush), the n-th time it reaches ``<point>``. Points, in the order a worker
event goes through them: ``consumed`` (decoded, nothing written), ``appended`` (in the
log, nothing published), ``published`` (published, not acknowledged). Unset in
production, where each check is one dictionary lookup.

``RUNG_FAIL_FSYNC_AT=<n>`` makes the n-th fsync of an event log (counted from the
searcher's start) fail with EIO, as a dying disk would: the searcher must stop without
acknowledging anything more (fail-stop).
"""

from __future__ import annotations

import errno
import os

__all__ = ["CRASH_ENV", "FSYNC_FAILURE_ENV", "crash_point", "fsync_failure_point"]

CRASH_ENV = "RUNG_CRASH_AT"
FSYNC_FAILURE_ENV = "RUNG_FAIL_FSYNC_AT"
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os._exit(137)


def fsync_failure_point() -> None:
    """Raise EIO at the fsync that ``RUNG_FAIL_FSYNC_AT`` names."""
    nth = os.environ.get(FSYNC_FAILURE_ENV)
    if not nth:
        return
    _counts["fsync"] = _counts.get("fsync", 0) + 1
    if _counts["fsync"] == int(nth):
        raise OSError(errno.EIO, f"injected by {FSYNC_FAILURE_ENV}={nth}")
