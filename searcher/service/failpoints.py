"""Crash points for fault tests.

``RUNG_CRASH_AT=<point>:<n>`` makes the searcher exit at once, as ``kill -9`` would (no
cleanup, no flush), the n-th time it reaches ``<point>``. Points, in the order a worker
event goes through them: ``consumed`` (decoded, nothing written), ``appended`` (in the
log, nothing published), ``published`` (published, not acknowledged). Unset in
production, where each check is one dictionary lookup.
"""

from __future__ import annotations

import os

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "RUNG_CRASH_AT"
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
