"""Replay: rebuild an experiment from its log, check it, and explain it.

Replaying is a fold of the pure core over the recorded inputs, in the recorded order, so
it gives exactly the state the live searcher had. ``verify`` re-decides every input and
compares the operations and commands with the ones recorded; the first difference is
reported as a diff.

A record whose input failed the experiment (``failed`` set) folds as that failure
(:meth:`ExperimentRun.fail`), not as its input: the log says what happened, whatever the
search code would do with the input today. If folding an input raises (the search code
changed since, or the log was written by a version that let the error escape), the fold
does what the live searcher does: the state goes back to the one before that input, and
the experiment fails there with the reason (``Replayed.failure``). Replay never raises
for what a search method does; it raises only for a log that is not a log.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.searcher.config import parse_config
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.reader import LogRecords
from rung.searcher.eventlog.records import (
    CreatedRecord,
    FailedRecord,
    InputRecord,
    Record,
    SnapshotRecord,
)
from rung.searcher.eventlog.snapshots import StoredSnapshot, matches
from rung.searcher.experiment import Experiment
from rung.searcher.methods import build_method
from rung.searcher.ops import Create
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["Divergence", "Replayed", "fold", "replay"]


@dataclass(frozen=True)
class Divergence:
    seq: int
    recorded: str
    recomputed: str

    def diff(self) -> str:
        lines = difflib.unified_diff(
            self.recorded.splitlines(),
            self.recomputed.splitlines(),
            fromfile=f"record {self.seq} (recorded)",
            tofile=f"record {self.seq} (now)",
            lineterm="",
        )
        return "\n".join(lines)


@dataclass
class Replayed:
    run: ExperimentRun
    created: CreatedRecord
    records: int = 0
    divergence: Divergence | None = None
    seen: set[str] = field(default_factory=set)
    last_input: InputRecord | None = None
    # A failure the fold found that the log does not hold (record seq, reason, step):
    # a recovering searcher writes it down (a ``failed`` record) and sends its kills.
    failure: tuple[int, str, Step] | None = None


def describe_error(exc: BaseException) -> str:
    """The reason an input failed an experiment, for people and for the log."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def fold(run: ExperimentRun, record: InputRecord, *, verify: bool = False) -> Step:
    """Apply one recorded input to ``run``: its failure if it failed, else the input.

    The trials the record created are handed to the experiment, which takes a
    model-based sampler's suggestion from them rather than recomputing it (``verify``:
    recomputes it too, and keeps the logged one if they agree within the tolerance).
    """
    if record.failed is not None:
        return run.fail(record.failed)
    experiment = run.experiment
    experiment.recorded = {op.request_id: op for op in record.ops if isinstance(op, Create)}
    experiment.verify_recorded = verify
    try:
        return run.start() if record.input is None else run.on_event(record.input)
    finally:
        experiment.recorded = None
        experiment.verify_recorded = False


def _decisions(ops: list[Any], commands: list[Any], failed: str | None) -> str:
    decided: dict[str, Any] = {"ops": ops, "commands": commands}
    if failed is not None:
        decided["failed"] = failed
    return json.dumps(decided, indent=1, sort_keys=True)


def _recorded(record: InputRecord) -> str:
    return _decisions(
        [op.model_dump(mode="json") for op in record.ops],
        [c.model_dump(mode="json") for c in record.commands],
        record.failed,
    )


def _recomputed(step: Step) -> str:
    return _decisions(
        [op.model_dump(mode="json") for op in step.ops],
        [{"worker_id": c.worker_id, "body": c.body.model_dump(mode="json")} for c in step.commands],
        step.failed,
    )


def _failure_now(result: Replayed, record: InputRecord, context_root: Path | None) -> str:
    """What the search does today with the input of a record that failed the experiment,
    applied to a copy of the state before it: the failure's reason, or the decisions."""
    if record.input is None and "/recovery-failure/" in record.message_id:
        return f"failed: {record.failed}"  # no input: the failure a recovery found
    probe = build_run(result.created, context_root)
    probe.restore(result.run.snapshot())
    try:
        step = probe.start() if record.input is None else probe.on_event(record.input)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (the failure is what is checked)
        return f"failed: {describe_error(exc)}"
    return f"applies now, and decides:\n{_recomputed(step)}"


def build_run(created: CreatedRecord, context_root: Path | None) -> ExperimentRun:
    config = parse_config(created.config).config
    context_dir = context_root / created.context_hash if context_root else None
    method = build_method(config, context_dir=context_dir, rules=created.rules or 1)
    return ExperimentRun(
        created.experiment_id,
        Experiment(config, method),
        context_hash=created.context_hash,
        checkpoint_root=created.checkpoint_root,
        warm_start_root=created.warm_start_root,
        start_secret=created.start_secret,
    )


OnStep = Callable[[InputRecord, Step, ExperimentRun], None]


def _kind(records: Sequence[Record], index: int) -> str:
    return records.kind(index) if isinstance(records, LogRecords) else records[index].kind


def _restore(
    result: Replayed, records: Sequence[Record], snapshot: StoredSnapshot | None, limit: int
) -> int:
    """Restore the newest snapshot within ``limit`` records; return how many it covers."""
    covered, state = 0, None
    if snapshot is not None and snapshot.seq <= limit and matches(snapshot, records):
        covered, state = snapshot.seq, snapshot.state
    for index in range(limit - 1, covered, -1):  # a snapshot record, in older logs
        if _kind(records, index) == "snapshot":
            record = records[index]
            if isinstance(record, SnapshotRecord):
                covered, state = index + 1, record.state
            break
    if state is not None:
        result.run.restore(state)
        result.seen = set(state.get("seen", []))
        result.records = covered
    return covered


def _last_input(records: Sequence[Record], limit: int) -> InputRecord | None:
    for index in range(limit - 1, 0, -1):
        if _kind(records, index) == "input":
            record = records[index]
            return record if isinstance(record, InputRecord) else None
    return None


def _fold_safely(
    result: Replayed,
    records: Sequence[Record],
    index: int,
    record: InputRecord,
    context_root: Path | None,
    *,
    verify: bool,
) -> Step:
    """Fold ``record``; if that raises, fail the experiment where the input was."""
    try:
        return fold(result.run, record, verify=verify)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (any error fails the experiment)
        reason = describe_error(exc)
    # The input may have changed the state half-way: fold the log again up to it.
    before = replay(records, context_root=context_root, until=index)
    result.run = before.run
    result.failure = result.failure or before.failure
    step = result.run.fail(reason)
    if result.failure is None:
        result.failure = (record.seq, reason, step)
    return step


def replay(
    records: Sequence[Record],
    *,
    snapshot: StoredSnapshot | None = None,
    context_root: Path | None = None,
    verify: bool = False,
    until: int | None = None,
    on_step: OnStep | None = None,
) -> Replayed:
    """Fold the log up to record ``until``: from ``snapshot`` or a snapshot record in the
    log, unless verifying or explaining, which fold every record from the start."""
    created = records[0] if records else None
    if not isinstance(created, CreatedRecord):
        raise SearcherError("not an experiment log: its first record must be 'created'")
    result = Replayed(build_run(created, context_root), created)
    limit = len(records) if until is None else max(1, min(until, len(records)))
    start = 1
    if not verify and on_step is None:
        start = max(start, _restore(result, records, snapshot, limit))
    for index in range(start, limit):
        record = records[index]
        result.records = record.seq
        if isinstance(record, FailedRecord):
            result.seen.add(record.message_id)
            result.run.fail(record.error)
            result.failure = None  # written down: nothing left for a recovery to record
        elif isinstance(record, InputRecord):
            result.seen.add(record.message_id)
            result.last_input = record
            if record.failed is not None:
                result.failure = None  # a failure is written down from here on
            if verify and record.failed is not None and result.divergence is None:
                now = _failure_now(result, record, context_root)
                if now != f"failed: {record.failed}":
                    result.divergence = Divergence(record.seq, f"failed: {record.failed}", now)
            step = _fold_safely(result, records, index, record, context_root, verify=verify)
            if on_step is not None:
                on_step(record, step, result.run)
            if verify and result.divergence is None:
                recorded, now = _recorded(record), _recomputed(step)
                if recorded != now:
                    result.divergence = Divergence(record.seq, recorded, now)
    if result.last_input is None:  # the snapshot covered it: its commands may be re-sent
        result.last_input = _last_input(records, limit)
    return result
