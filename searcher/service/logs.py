"""``read_trial_logs``: a page of what trials' processes wrote.

Lines come from the experiment's trial log store (``trial-logs.jsonl``, kept apart from
the event log). An experiment whose log was written before the store existed has lines
in its event log too, as ``log_lines`` input records: those are older, so a reader gets
them first (cursor ``after_seq``, a record number), then the store's (cursor ``after``).
A page holds at most ``limit`` lines and is read from at most
:data:`~rung.broker.limits.MAX_REPLY_BYTES` of either file; reading happens in a thread.

The reply: ``lines`` (each ``trial_id``, ``attempt``, ``stream``, ``text``), the cursors
to ask with next (``next``, ``next_seq``), ``more`` (there was more to read when the page
was made: ask again at once), the experiment's ``state``, the trial's ``trial_state``
(when one was asked for), and ``dropped`` (lines the store dropped since the searcher
started, at its limit). The states are read before the lines: a reader that sees the
trial ended and no ``more`` has every line stored before it ended.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rung.broker.limits import MAX_REPLY_BYTES
from rung.broker.schemas import LogLines, ReadTrialLogs
from rung.searcher.eventlog.file import FileEventLog
from rung.searcher.eventlog.records import InputRecord, record_adapter
from rung.searcher.host.host import LOG_LINES_MARK
from rung.searcher.service.errors import ExperimentNotFoundError

if TYPE_CHECKING:
    from rung.searcher.service.service import SearcherService

__all__ = ["read_trial_logs"]

# Records read from an older event log at a time, looking for log_lines.
_RECORDS_PER_READ = 500


async def read_trial_logs(service: SearcherService, body: ReadTrialLogs) -> dict[str, Any]:
    """One page of an experiment's trial log lines (of one trial when ``trial_id``)."""
    host = service.live(body.experiment_id).host
    trial_state = None
    if body.trial_id is not None:
        trial = host.run.by_id.get(body.trial_id)
        if trial is None:
            raise ExperimentNotFoundError(
                f"experiment {body.experiment_id} has no trial {body.trial_id}"
            )
        trial_state = trial.state
    state = host.run.state
    lines: list[dict[str, Any]] = []
    next_seq = max(body.after_seq, 0)
    more = False
    if next_seq < host.legacy_log_seq:
        lines, next_seq = await asyncio.to_thread(
            _legacy_lines, host.log, body, host.legacy_log_seq
        )
        more = next_seq < host.legacy_log_seq
    else:
        next_seq = max(next_seq, host.legacy_log_seq)
    after = body.after
    if not more and len(lines) < body.limit:
        page = await asyncio.to_thread(
            host.trial_logs.read,
            body.after,
            trial_id=body.trial_id,
            rank=body.rank,
            limit=body.limit - len(lines),
            max_bytes=MAX_REPLY_BYTES,
        )
        lines += page.lines
        after, more = page.next, page.more
    return {
        "lines": lines,
        "next": after,
        "next_seq": next_seq,
        "more": more,
        "state": state,
        "trial_state": trial_state,
        "dropped": host.trial_logs.dropped,
    }


def _legacy_lines(
    event_log: FileEventLog, body: ReadTrialLogs, until: int
) -> tuple[list[dict[str, Any]], int]:
    """The lines of the ``log_lines`` records after record ``body.after_seq`` (up to
    record ``until``), at most ``body.limit`` of them (a record is never split: one with
    more lines than that comes alone) from at most MAX_REPLY_BYTES of records; and the
    number of the last record read."""
    lines: list[dict[str, Any]] = []
    seq = body.after_seq
    scanned = 0
    while seq < until and scanned < MAX_REPLY_BYTES:
        raws = event_log.read_after(seq, min(_RECORDS_PER_READ, until - seq))
        if not raws:
            break
        for raw in raws:
            found = _lines_of(raw, body.trial_id, body.rank) if LOG_LINES_MARK in raw else []
            if lines and len(lines) + len(found) > body.limit:
                return lines, seq
            lines += found
            seq += 1
            scanned += len(raw) + 1
            if len(lines) >= body.limit or scanned >= MAX_REPLY_BYTES:
                return lines, seq
    return lines, seq


def _lines_of(raw: bytes, trial_id: int | None, rank: int | None) -> list[dict[str, Any]]:
    try:
        record = record_adapter.validate_json(raw)
    except (ValueError, ValidationError):
        return []
    if not isinstance(record, InputRecord) or record.ignored is not None:
        return []
    body = record.input
    if not isinstance(body, LogLines):
        return []
    if trial_id is not None and body.trial_id != trial_id:
        return []
    return [
        {"trial_id": body.trial_id, "attempt": body.attempt, "stream": x.stream, "text": x.text}
        | ({"rank": x.rank} if x.rank is not None else {})
        for x in body.lines
        if rank is None or x.rank == rank
    ]
