"""Growth: inputs that would make the searcher's disk or memory grow without bound.

A chatty trial's log lines do not grow the decision log (they go to the trial log store,
which caps with a marker), and a long experiment's applied ids stay bounded. (Heartbeats
from random worker ids are bounded by the worker registry, tested with it.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from random import Random

import pytest

from rung.broker.schemas import LogLine, LogLines, ProgressReported
from rung.searcher.eventlog.seen import MAX_ABOVE, MAX_OTHER, MAX_SENDERS, WINDOW, SeenIds
from rung.searcher.eventlog.trial_logs import TRIAL_LOG_FILE, TrialLogStore
from rung.searcher.host import ExperimentHost
from tests.hostile.conftest import HostileTally
from tests.unit.searcher.test_host import EID, fragile_config, new_host, start_all

CLASS = "growth"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ExperimentHost]:
    opened = new_host(tmp_path, fragile_config())
    start_all(opened)
    yield opened
    opened.close()


def _lines(n: int, text: str) -> LogLines:
    return LogLines(
        experiment_id=EID,
        trial_id=1,
        attempt=1,
        worker_id="w",
        lines=[LogLine(stream="stdout", text=f"{text} {i}") for i in range(n)],
    )


def test_a_chatty_trial_does_not_grow_the_decision_log(
    host: ExperimentHost, hostile: HostileTally
) -> None:
    limit = 1024 * 1024
    host.trial_logs = TrialLogStore(
        host.log.path.with_name(TRIAL_LOG_FILE), experiment_id=EID, max_bytes=limit
    )
    records, size = host.log.seq, host.log.path.stat().st_size
    started = time.monotonic()
    for n in range(1, 2001):  # 200,000 lines, about 20 MB of text
        host.apply(_lines(100, "x" * 90), f"w/s1/{n}", at=0)
    seconds = time.monotonic() - started
    assert (host.log.seq, host.log.path.stat().st_size) == (records, size)
    store = host.log.path.with_name(TRIAL_LOG_FILE)
    assert limit - 20_000 < store.stat().st_size <= limit + 64 * 1024
    last = json.loads(store.read_bytes().splitlines()[-1])
    assert last["s"] == "rung"
    assert "dropped" in last["x"]
    assert host.trial_logs.dropped > 150_000
    hostile.record(CLASS, "a chatty trial: 200,000 lines", "contained", seconds)


def test_log_lines_delivered_again_are_not_stored_again(
    host: ExperimentHost, hostile: HostileTally
) -> None:
    started = time.monotonic()
    rng = Random(7)
    delivered = []
    for n in range(1, 501):
        delivered.append(n)
        host.apply(_lines(2, f"batch {n}"), f"w/s1/{n}", at=0)
        if rng.random() < 0.3:  # a redelivery of a recent batch
            again = rng.choice(delivered[-30:])
            assert host.apply(_lines(2, f"batch {again}"), f"w/s1/{again}", at=0).duplicate
    lines = host.trial_logs.read(limit=10_000).lines
    assert len(lines) == 1000
    hostile.record(CLASS, "log_lines delivered again", "contained", time.monotonic() - started)


def test_a_hundred_thousand_applied_ids_keep_the_set_bounded(hostile: HostileTally) -> None:
    started = time.monotonic()
    seen = SeenIds(EID)
    rng = Random(1)
    counters = [0] * 8
    for _ in range(100_000):
        worker = rng.randrange(8)
        counters[worker] += rng.choice([1, 2, 3])  # other experiments take the rest
        message_id = f"w{worker}/session/{counters[worker]}"
        assert message_id not in seen
        seen.add(message_id)
    assert len(seen) <= 8 * (WINDOW + 1)
    assert all(f"w{w}/session/{counters[w]}" in seen for w in range(8))
    hostile.record(CLASS, "100,000 applied ids", "contained", time.monotonic() - started)


def test_a_long_trial_keeps_its_hosts_applied_ids_bounded(
    host: ExperimentHost, hostile: HostileTally
) -> None:
    started = time.monotonic()
    ids = {"experiment_id": EID, "trial_id": 1, "attempt": 1, "worker_id": "w"}
    for n in range(1, 10_001):
        host.apply(ProgressReported(**ids, units=0.01), f"w/s1/{2 * n}", at=0)
    assert len(host.seen) <= WINDOW + 2
    snapshot = host.snapshot_due(1)
    assert snapshot is not None
    assert len(json.dumps(snapshot.state["seen"])) < 100_000
    hostile.record(CLASS, "a long trial: 10,000 reports", "contained", time.monotonic() - started)


def test_forged_ids_from_many_senders_cannot_grow_the_set(hostile: HostileTally) -> None:
    started = time.monotonic()
    seen = SeenIds(EID)
    rng = Random(2)
    for n in range(50_000):
        seen.add(f"forged-{rng.getrandbits(64):x}/s/{rng.randrange(1, 10**12)}")
        seen.add(f"{EID}/control/{n}")
    assert len(seen) <= MAX_SENDERS + MAX_ABOVE + MAX_OTHER + 1
    hostile.record(CLASS, "forged ids, 50,000 senders", "contained", time.monotonic() - started)
