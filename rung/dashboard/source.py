"""Where the dashboard reads experiments from: a running searcher, or a state directory.

* :class:`ClientSource`: a searcher, through ``rung.Client``: records come from
  ``Experiment.watch()`` (exactly once, in order, across lost connections), log lines
  from ``read_trial_logs``, and controls go to the searcher, which checks who may use
  them (docs/security.md).
* :class:`DirSource`: a searcher's state directory (``experiments/<id>/events.jsonl``),
  read-only, with no searcher: for a post-mortem, or a cluster the dashboard may not
  reach. A log that grows is followed by reading what was appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from rung.broker.schemas import ReadTrialLogs
from rung.client import Client
from rung.searcher.eventlog import (
    TRIAL_LOG_FILE,
    CreatedRecord,
    EventLogCorruptError,
    Record,
    TrialLogStore,
    lost_race,
    read_log,
)
from rung.searcher.eventlog.records import record_adapter

__all__ = ["ClientSource", "DirSource", "ExperimentRef", "LogPage", "Source"]

Action = Literal["pause", "activate", "cancel", "kill"]
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_TAIL_POLL_S: Final = 0.25
# A line longer than this is not a record (the broker's largest message is far smaller).
_LONGEST_LINE: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExperimentRef:
    """An experiment as a listing has it (before its log is read): a searcher's listing
    knows its state, progress and best metric; a state directory only its config."""

    experiment_id: str
    name: str | None
    state: str
    labels: tuple[str, ...]
    owner: str | None = None
    progress: float | None = None
    best: float | None = None
    best_trial: int | None = None


@dataclass(frozen=True)
class LogPage:
    """A page of a trial's log lines; ``next``/``next_seq``: the cursors to read on from
    (the second for lines an experiment from before the trial log store kept in its
    event log)."""

    lines: list[dict[str, Any]]
    next: int
    more: bool
    next_seq: int = 0


class Source(Protocol):
    """What the dashboard needs of wherever the experiments are."""

    @property
    def writable(self) -> bool: ...

    @property
    def describe(self) -> str: ...

    async def experiments(self) -> list[ExperimentRef]: ...

    async def newest(self, experiment_id: str) -> int: ...

    def records(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]: ...

    async def logs(
        self,
        experiment_id: str,
        trial_id: int,
        after: int,
        after_seq: int = 0,
        rank: int | None = None,
    ) -> LogPage: ...

    async def control(self, experiment_id: str, action: Action) -> str: ...

    async def kill_trial(self, experiment_id: str, trial_id: int) -> str: ...


def valid_id(experiment_id: str) -> bool:
    """Whether ``experiment_id`` can be an experiment's id (and a directory name)."""
    return _ID.fullmatch(experiment_id) is not None


class ClientSource:
    """A running searcher, through a connected ``rung.Client``."""

    def __init__(self, client: Client, *, poll_s: float = 1.0) -> None:
        self.client = client
        self.poll_s = poll_s

    @property
    def writable(self) -> bool:
        return True

    @property
    def describe(self) -> str:
        return "searcher" if self.client.url is None else "searcher via the broker"

    async def experiments(self) -> list[ExperimentRef]:
        return [
            ExperimentRef(
                s.experiment_id,
                s.name,
                s.state,
                tuple(s.labels),
                s.owner,
                s.progress,
                s.best_trial.metric if s.best_trial is not None else None,
                s.best_trial.trial_id if s.best_trial is not None else None,
            )
            for s in await self.client.list_experiments()
        ]

    async def newest(self, experiment_id: str) -> int:
        _, _, newest = await self.client.rpc.read_records(experiment_id, limit=1)
        return newest

    async def records(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]:
        experiment = self.client.experiment(experiment_id)
        async for record in experiment.watch(after_seq=after_seq, poll_s=self.poll_s):
            yield record

    async def logs(
        self,
        experiment_id: str,
        trial_id: int,
        after: int,
        after_seq: int = 0,
        rank: int | None = None,
    ) -> LogPage:
        request = ReadTrialLogs(
            experiment_id=experiment_id,
            trial_id=trial_id,
            after=after,
            after_seq=after_seq,
            limit=1000,
            rank=rank,
        )
        result = await self.client.rpc._call(request)  # noqa: SLF001 (the client's own RPC)
        return LogPage(
            list(result["lines"]),
            int(result["next"]),
            bool(result["more"]),
            int(result.get("next_seq", after_seq)),
        )

    async def control(self, experiment_id: str, action: Action) -> str:
        experiment = self.client.experiment(experiment_id)
        match action:
            case "pause":
                return await experiment.pause()
            case "activate":
                return await experiment.activate()
            case "cancel":
                return await experiment.cancel()
            case "kill":
                return await experiment.kill()

    async def kill_trial(self, experiment_id: str, trial_id: int) -> str:
        return await self.client.experiment(experiment_id).trial(trial_id).kill()


class DirSource:
    """A searcher's state directory, read-only."""

    def __init__(self, state_dir: Path, *, poll_s: float = _TAIL_POLL_S) -> None:
        self.root = state_dir / "experiments"
        self.poll_s = poll_s

    @property
    def writable(self) -> bool:
        return False

    @property
    def describe(self) -> str:
        return f"state directory {self.root.parent}"

    def _log(self, experiment_id: str) -> Path:
        if not valid_id(experiment_id):
            raise FileNotFoundError(f"no experiment {experiment_id!r}")
        return self.root / experiment_id / "events.jsonl"

    async def experiments(self) -> list[ExperimentRef]:
        return await asyncio.to_thread(self._scan)

    def _scan(self) -> list[ExperimentRef]:
        out: list[ExperimentRef] = []
        for path in sorted(self.root.glob("*/events.jsonl")):
            created = _first_record(path)
            if created is None or created.experiment_id != path.parent.name:
                continue  # not a log, or one moved under another experiment's name
            config = created.config
            labels = config.get("labels") or []
            out.append(
                ExperimentRef(
                    created.experiment_id,
                    config.get("name") if isinstance(config.get("name"), str) else None,
                    "UNKNOWN",
                    tuple(str(label) for label in labels) if isinstance(labels, list) else (),
                    created.owner,
                )
            )
        return out

    async def newest(self, experiment_id: str) -> int:
        path = self._log(experiment_id)
        return await asyncio.to_thread(lambda: len(read_log(path)))

    async def records(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]:
        """Every record after ``after_seq``, then what is appended, until cancelled."""
        path = self._log(experiment_id)
        records = await asyncio.to_thread(read_log, path)
        for index in range(after_seq, len(records)):
            yield records[index]  # parsed one at a time: the caller folds as it goes
        last = len(records)
        offset = records.offset(last)
        pending = b""
        while True:
            await asyncio.sleep(self.poll_s)
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if not chunk:
                continue
            offset += len(chunk)
            pending += chunk
            if len(pending) > _LONGEST_LINE:
                raise EventLogCorruptError(
                    f"{path}: a line of more than {_LONGEST_LINE} bytes after record {last}: "
                    "not a record a searcher writes; the dashboard stops following it"
                )
            *lines, pending = pending.split(b"\n")
            for line in lines:
                record = record_adapter.validate_json(line)
                if lost_race(record.seq, record.kind, last):
                    continue  # two searchers appended at once; the line first written counts
                if record.seq != last + 1:
                    raise EventLogCorruptError(
                        f"{path}: record {record.seq} follows record {last}; the log was "
                        "rewritten under the dashboard: open the page again"
                    )
                last = record.seq
                if record.seq > after_seq:
                    yield record

    async def logs(
        self,
        experiment_id: str,
        trial_id: int,
        after: int,
        after_seq: int = 0,
        rank: int | None = None,
    ) -> LogPage:
        store = TrialLogStore(self._log(experiment_id).with_name(TRIAL_LOG_FILE))
        page = await asyncio.to_thread(store.read, after, trial_id=trial_id, rank=rank)
        return LogPage(page.lines, page.next, page.more, after_seq)

    async def control(self, experiment_id: str, action: Action) -> str:
        raise PermissionError("a state directory is read-only: run the dashboard on a searcher")

    async def kill_trial(self, experiment_id: str, trial_id: int) -> str:
        raise PermissionError("a state directory is read-only: run the dashboard on a searcher")


def _first_record(path: Path) -> CreatedRecord | None:
    with contextlib.suppress(OSError, ValueError), path.open("rb") as handle:
        record = record_adapter.validate_json(handle.readline())
        return record if isinstance(record, CreatedRecord) else None
    return None


def _read_from(path: Path, offset: int) -> bytes:
    """What was appended after ``offset`` (at most 16 MiB at a time)."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        if size < offset:
            raise EventLogCorruptError(
                f"{path}: the log is shorter ({size} bytes) than what the dashboard read "
                f"({offset}): it was cut or replaced; open the page again"
            )
        handle.seek(offset)
        return handle.read(16 * 1024 * 1024)
