"""Trial log lines are stored apart from the event log: no record, no fsync, bounded,
each delivery stored once; older logs (lines in log_lines records) still replay and
still show their lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rung.broker.limits import MAX_LOG_LINE_CHARS
from rung.broker.schemas import LogLine, LogLines, ReadTrialLogs
from rung.client._client import Experiment
from rung.searcher.eventlog import InputRecord, read_log, replay
from rung.searcher.eventlog.trial_logs import TRIAL_LOG_FILE, TrialLogStore
from rung.searcher.host import ExperimentHost
from rung.searcher.service.errors import ExperimentNotFoundError
from rung.searcher.service.logs import read_trial_logs
from tests.unit.searcher.test_host import EID, fragile_config, new_host, start_all


def batch(trial_id: int, texts: list[str], *, attempt: int = 1, worker: str = "w") -> LogLines:
    return LogLines(
        experiment_id=EID,
        trial_id=trial_id,
        attempt=attempt,
        worker_id=worker,
        lines=[LogLine(stream="stdout", text=text) for text in texts],
    )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ExperimentHost]:
    opened = new_host(tmp_path, fragile_config())
    start_all(opened)
    yield opened
    opened.close()


def service_of(host: ExperimentHost) -> Any:
    """What read_trial_logs needs of the service: the experiment, by id."""

    def live(experiment_id: str) -> Any:
        if experiment_id != host.experiment_id:
            raise ExperimentNotFoundError(f"no experiment {experiment_id!r}")
        return SimpleNamespace(host=host)

    return SimpleNamespace(live=live)


async def read_all(host: ExperimentHost, **request: Any) -> tuple[list[str], dict[str, Any]]:
    """Page through read_trial_logs; the texts and the last reply."""
    texts: list[str] = []
    after = after_seq = 0
    while True:
        body = ReadTrialLogs(experiment_id=EID, after=after, after_seq=after_seq, **request)
        reply = await read_trial_logs(service_of(host), body)
        texts += [line["text"] for line in reply["lines"]]
        after, after_seq = reply["next"], reply["next_seq"]
        if not reply["more"]:
            return texts, reply


# ---------------------------------------------------------------------- the host
def test_log_lines_are_stored_apart_and_add_nothing_to_the_event_log(
    host: ExperimentHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    seq, size = host.log.seq, host.log.path.stat().st_size

    def no_fsync(fd: int) -> None:
        raise AssertionError("log lines are never fsync'd")

    monkeypatch.setattr(os, "fsync", no_fsync)
    applied = host.apply(batch(1, ["hello", "world"]), "w/s1/10", at=0)
    monkeypatch.undo()
    assert not applied.duplicate
    assert applied.seq == seq
    assert (host.log.seq, host.log.path.stat().st_size) == (seq, size)
    stored = host.log.path.with_name(TRIAL_LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["x"] for line in stored] == ["hello", "world"]
    # A message id of log lines is not kept in the applied ids of the decision log.
    assert "w/s1/10" not in host.seen


def test_a_log_lines_event_delivered_twice_is_stored_once(host: ExperimentHost) -> None:
    host.apply(batch(1, ["once"]), "w/s1/10", at=0)
    again = host.apply(batch(1, ["once"]), "w/s1/10", at=0)
    assert again.duplicate
    host.close()
    # After a restart too: the store reads the ids back from its end.
    reopened = ExperimentHost.open(host.log.path, owner="test", context_root=None)
    assert reopened is not None
    try:
        assert reopened.apply(batch(1, ["once"]), "w/s1/10", at=0).duplicate
        assert reopened.trial_logs.read().lines == [
            {"trial_id": 1, "attempt": 1, "stream": "stdout", "text": "once"}
        ]
    finally:
        reopened.close()


def test_lines_of_an_unknown_trial_or_of_a_process_that_does_not_own_it_are_not_stored(
    host: ExperimentHost,
) -> None:
    assert host.apply(batch(99, ["forged"]), "w/s1/1", at=0).step.ignored == "unknown trial 99"
    other = host.apply(batch(1, ["impostor"], worker="x"), "x/s1/1", at=0)
    assert other.step.ignored is not None
    assert host.trial_logs.read().lines == []


# ---------------------------------------------------------------------- the store
def test_the_store_is_bounded_and_says_what_it_dropped(tmp_path: Path) -> None:
    store = TrialLogStore(tmp_path / TRIAL_LOG_FILE, max_bytes=4096)
    for n in range(200):
        store.append(f"w/s/{n + 1}", batch(1, [f"line {n} " + "x" * 40]))
    store.append("w/s/999", batch(2, ["trial two"]))
    assert store.dropped > 0
    size = (tmp_path / TRIAL_LOG_FILE).stat().st_size
    assert size <= 4096 + 64 * 1024
    lines = store.read(limit=10_000).lines
    markers = [line for line in lines if line["stream"] == "rung"]
    # One marker per trial attempt whose lines were dropped, naming the limit.
    assert [m["trial_id"] for m in markers] == [1, 2]
    assert "MAX_TRIAL_LOG_BYTES" in markers[0]["text"]
    assert len(lines) - len(markers) + store.dropped == 201
    store.close()


def test_a_line_longer_than_the_limit_is_cut(tmp_path: Path) -> None:
    store = TrialLogStore(tmp_path / TRIAL_LOG_FILE)
    store.append("w/s/1", batch(1, ["y" * (MAX_LOG_LINE_CHARS + 100)]))
    (line,) = store.read().lines
    assert len(line["text"]) == MAX_LOG_LINE_CHARS
    store.close()


def test_pages_follow_the_cursor_and_filter_by_trial(tmp_path: Path) -> None:
    store = TrialLogStore(tmp_path / TRIAL_LOG_FILE)
    for n in range(30):
        store.append(f"w/s/{n + 1}", batch(1 + n % 2, [f"l{n}"]))
    seen, after = [], 0
    while True:
        page = store.read(after, trial_id=2, limit=4)
        assert len(page.lines) <= 4
        seen += [line["text"] for line in page.lines]
        after = page.next
        if not page.more:
            break
    assert seen == [f"l{n}" for n in range(30) if n % 2]
    # A cursor in the middle of a line resumes at the next one; one past the end, nothing.
    assert store.read(3).lines[0]["text"] == "l1"
    assert store.read(10**9).lines == []
    # A line half written (a crash) is skipped by readers.
    with (tmp_path / TRIAL_LOG_FILE).open("ab") as handle:
        handle.write(b'{"t":1,"a":1,"s":"stdout","x":"torn\n')
    store.append("w/s/100", batch(1, ["after"]))
    assert store.read(limit=100).lines[-1]["text"] == "after"
    store.close()


# ---------------------------------------------------------------------- read_trial_logs
async def test_read_trial_logs_pages_within_the_limit(host: ExperimentHost) -> None:
    for n in range(25):
        host.apply(batch(1, [f"a{n}", f"b{n}"]), f"w/s1/{n + 1}", at=0)
    body = ReadTrialLogs(experiment_id=EID, trial_id=1, limit=7)
    first = await read_trial_logs(service_of(host), body)
    assert len(first["lines"]) == 7
    assert first["more"]
    assert first["trial_state"] == "RUNNING"
    assert first["state"] == "ACTIVE"
    texts, last = await read_all(host, trial_id=1, limit=7)
    assert texts == [t for n in range(25) for t in (f"a{n}", f"b{n}")]
    assert not last["more"]
    with pytest.raises(ExperimentNotFoundError, match="no trial 42"):
        await read_trial_logs(service_of(host), ReadTrialLogs(experiment_id=EID, trial_id=42))


def _old_style_lines(host: ExperimentHost, message_id: str, body: LogLines) -> None:
    """What the searcher did before the store: the lines as an input record of the log."""
    step = host.run.on_event(body)
    host.append(InputRecord.of(host.log.seq + 1, message_id, body, step, at=0))
    host.seen.add(message_id)


async def test_an_older_log_with_log_lines_records_replays_and_shows_its_lines(
    host: ExperimentHost,
) -> None:
    _old_style_lines(host, "w/s0/1", batch(1, ["old one", "old two"]))
    _old_style_lines(host, "w/s0/2", batch(2, ["old of trial two"]))
    host.log.write_snapshot(EID, {**host.run.snapshot(), "seen": sorted(["w/s0/1", "w/s0/2"])})
    _old_style_lines(host, "w/s0/3", batch(1, ["old three"]))
    host.close()
    records = read_log(host.log.path)
    assert replay(records, verify=True).divergence is None
    reopened = ExperimentHost.open(host.log.path, owner="test", context_root=None)
    assert reopened is not None
    try:
        assert reopened.legacy_log_seq > 0
        # The applied ids survive: of the (older, list) snapshot and of the records after it.
        assert all(i in reopened.seen for i in ("w/s0/1", "w/s0/2", "w/s0/3"))
        reopened.apply(batch(1, ["new one"]), "w/s1/1", at=0)
        # Old lines first (from the event log), then the store's: both, in order.
        texts, _ = await read_all(reopened, trial_id=1, limit=2)
        assert texts == ["old one", "old two", "old three", "new one"]
        everything, _ = await read_all(reopened)
        assert everything == ["old one", "old two", "old of trial two", "old three", "new one"]
    finally:
        reopened.close()


# ---------------------------------------------------------------------- the client
async def test_the_client_pages_and_follows_until_the_trial_has_ended() -> None:
    replies: list[dict[str, Any]] = [
        {"lines": ["a"], "more": False, "state": "ACTIVE", "trial_state": "RUNNING"},
        {"lines": ["b"], "more": True, "state": "ACTIVE", "trial_state": "RUNNING"},
        {"lines": ["c"], "more": False, "state": "ACTIVE", "trial_state": "COMPLETED"},
    ]
    asked: list[ReadTrialLogs] = []

    async def call(request: ReadTrialLogs) -> dict[str, Any]:
        asked.append(request)
        reply = replies[len(asked) - 1]
        lines = [
            {"trial_id": 1, "attempt": 1, "stream": "stdout", "text": text}
            for text in reply["lines"]
        ]
        return {**reply, "lines": lines, "next": 10 * len(asked), "next_seq": 0}

    client = SimpleNamespace(rpc=SimpleNamespace(_call=call))
    trial = Experiment(client, EID).trial(1)  # type: ignore[arg-type]
    lines = [line.text async for line in trial.logs(follow=True, poll_s=0.01)]
    assert lines == ["a", "b", "c"]
    assert [request.after for request in asked] == [0, 10, 20]
    assert {request.trial_id for request in asked} == {1}
    # Without follow, it stops at the end of what is stored.
    asked.clear()
    assert [line.text async for line in trial.logs()] == ["a"]


# ---------------------------------------------------------------------- ranks
def ranked(trial_id: int, lines: list[tuple[int | None, str]]) -> LogLines:
    return LogLines(
        experiment_id=EID,
        trial_id=trial_id,
        attempt=1,
        worker_id="w",
        lines=[LogLine(stream="stdout", text=text, rank=rank) for rank, text in lines],
    )


async def test_a_distributed_trials_lines_keep_their_rank_and_filter_by_it(
    host: ExperimentHost,
) -> None:
    host.apply(
        ranked(1, [(0, "chief"), (1, "member one"), (10, "member ten"), (None, "untagged")]),
        "w/s1/1",
        at=0,
    )
    host.apply(ranked(2, [(1, "another trial's rank 1")]), "w/s1/2", at=0)
    lines = host.trial_logs.read(trial_id=1).lines
    assert [line.get("rank") for line in lines] == [0, 1, 10, None]
    assert "rank" not in lines[3]  # a line without a rank is stored and read as before
    texts, _ = await read_all(host, trial_id=1, rank=1)
    assert texts == ["member one"]  # not rank 10, not the other trial's rank 1
    texts, _ = await read_all(host, trial_id=1, rank=0)
    assert texts == ["chief"]
    texts, _ = await read_all(host, rank=1)
    assert texts == ["member one", "another trial's rank 1"]
    # A text that looks like a rank is not one.
    host.apply(ranked(1, [(None, 'print("r":1)')]), "w/s1/3", at=0)
    texts, _ = await read_all(host, trial_id=1, rank=1)
    assert texts == ["member one"]
