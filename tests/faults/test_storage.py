"""The searcher's storage fails under a running search (issue 15, item 6).

Two faults, each on the shared scenario with real processes on the real RabbitMQ: the
searcher's state directory on a tiny tmpfs that fills up mid-search, and a disk that
answers one fsync of the event log with EIO (the ``RUNG_FAIL_FSYNC_AT`` failpoint). Each
time the searcher must say why ("storage failed") and exit with status 74 at once,
acknowledging nothing more; restarted while the disk still fails (still full, or failing
its first fsync, in recovery), it stops the same way. Restarted on the same directory
once the storage is fixed, it finishes the search, and then:

* the log the dead searcher left is a prefix of the final log (recovery rewrote none of
  it, except a torn last line, which never counted);
* nothing acknowledged was lost: a tap queue bound beside the events queue saw every
  event the workers sent; each one sent before the crash and no longer in the events
  queue after it (acknowledged by the dead searcher) is in the log it left;
* every event the workers sent is in the final log, exactly once (nothing applied twice),
  and the shared checker passes against the fault-free run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from rung.broker import Topology
from rung.searcher.eventlog import InputRecord, Record, read_log
from rung.searcher.failpoints import FSYNC_FAILURE_ENV
from rung.searcher.service.service import EXIT_STORAGE_FAILED
from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import (
    config_text,
    finish,
    log_path,
    start_experiment,
    wait_events,
)
from tests.support import AMQP_URL, wait_sync

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]

# The state directory's file system: about four times what the search needs (its log is
# about 45 KB, its context 16 KB), so that only the filler makes it run out.
DISK_BYTES = 256 * 1024
# The event-log fsync that fails with EIO: past the first results, well before the end.
FAILING_FSYNC = 40


# ---------------------------------------------------------------- the small disk
def _mount_tmpfs(where: Path, size: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (or CAP_SYS_ADMIN); run the fault suite as root")
    where.mkdir()
    options = f"size={size},mode=0755"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "rung-test-disk", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")


def _unmount(where: Path) -> None:
    done = subprocess.run(
        ["umount", str(where)], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:  # still busy: detach it now, the kernel frees it once unused
        subprocess.run(["umount", "--lazy", str(where)], timeout=30, check=True)


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where``; unmounted however the test ends."""
    _mount_tmpfs(where, size)
    try:
        yield where
    finally:
        _unmount(where)


def fill_up(disk: Path) -> Path:
    """Take every free byte of ``disk`` with a filler file; return it (delete it to free)."""
    filler = disk / "filler"
    chunk = bytes(64 * 1024)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


# ---------------------------------------------------------------- what the workers sent
class EventTap:
    """A queue bound to the events exchange beside the searcher's: a copy of every event
    the workers send (heartbeats have keys of their own, and are not in it)."""

    def __init__(self, namespace: str) -> None:
        self.topology = Topology(namespace)
        self.name = f"{namespace}.test-tap"
        self.seen: list[str] = []

    def open(self) -> None:
        async def declare() -> None:
            async with await aio_pika.connect(AMQP_URL) as connection:
                channel = await connection.channel()
                # Gone by itself ten minutes after its last use, should close() not run.
                queue = await channel.declare_queue(self.name, arguments={"x-expires": 600_000})
                await queue.bind(self.topology.events_exchange, f"{Topology.EVENTS_KEY}.#")

        asyncio.run(declare())

    def drain(self) -> list[str]:
        """The ids of the events sent since the last drain; ``seen`` keeps them all."""
        ids = asyncio.run(_ids(self.name, take=True))
        self.seen.extend(ids)
        return ids

    def consumers(self) -> int:
        """How many consumers the searcher's events queue has."""

        async def count() -> int:
            async with await aio_pika.connect(AMQP_URL) as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(self.topology.events_queue, passive=True)
                return queue.declaration_result.consumer_count or 0

        return asyncio.run(count())

    def waiting(self) -> set[str]:
        """The ids of the events waiting in the searcher's events queue, left there."""
        return set(asyncio.run(_ids(self.topology.events_queue, take=False)))

    def close(self) -> None:
        async def delete() -> None:
            async with await aio_pika.connect(AMQP_URL) as connection:
                channel = await connection.channel()
                await channel.queue_delete(self.name)

        asyncio.run(delete())


async def _ids(name: str, *, take: bool) -> list[str]:
    """The message ids in queue ``name``: taken, or held unacknowledged until the
    connection closes, which puts them back."""
    ids: list[str] = []
    async with await aio_pika.connect(AMQP_URL) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=False)
        while (message := await queue.get(no_ack=take, fail=False, timeout=10)) is not None:
            assert message.message_id, f"a message without an id in {name}"
            ids.append(message.message_id)
    return ids


@contextlib.contextmanager
def event_tap(cluster: Cluster) -> Iterator[EventTap]:
    tap = EventTap(cluster.namespace)
    tap.open()
    try:
        yield tap
    finally:
        tap.close()


# ---------------------------------------------------------------- the checks
def _applied(records: list[Record]) -> list[str]:
    return [r.message_id for r in records if isinstance(r, InputRecord)]


@dataclass
class Crash:
    """What the searcher left when it stopped."""

    records: list[Record]  # its log, without a torn last line
    torn: bytes  # the torn last line, if any
    waiting: set[str]  # the events in the queue: sent, not acknowledged

    def torn_message_id(self) -> str | None:
        """The message id in the torn line, where its write got that far."""
        match = re.search(rb'"message_id":"([^"]+)"', self.torn)
        return match.group(1).decode() if match else None


def _crashed(cluster: Cluster, tap: EventTap, experiment_id: str, why: str) -> Crash:
    """The searcher stopped for ``why``; nothing it acknowledged is missing from its log."""
    status = cluster.processes["searcher"].wait(60)
    text = cluster.log_text("searcher")
    assert status == EXIT_STORAGE_FAILED, text[-3000:]
    assert "storage failed" in text
    assert why in text, text[-3000:]
    # Once the broker has seen the searcher's connections close (no consumer left), what
    # it had not acknowledged is back in the queue. Sent before that, and not waiting in
    # the queue after: acknowledged by the dead searcher.
    wait_sync(lambda: tap.consumers() == 0, 30, "the broker to see the searcher gone")
    sent = set(tap.drain())
    waiting = tap.waiting()
    acknowledged = sent - waiting
    path = log_path(cluster, experiment_id)
    crash = Crash(list(read_log(path)), path.read_bytes().rpartition(b"\n")[2], waiting)
    lost = acknowledged - set(_applied(crash.records))
    assert not lost, f"acknowledged, and not in the log: {sorted(lost)}"
    assert acknowledged, "the searcher had acknowledged nothing: the fault came too early"
    return crash


def _restart(cluster: Cluster, name: str) -> None:
    cluster.start(name, "searcher", "--state-dir", str(cluster.state_dir))
    cluster.wait_log(name, "searcher ready")
    assert "experiment recovered from its log" in cluster.log_text(name)
    cluster.processes["searcher"] = cluster.processes.pop(name)


def _finished(
    cluster: Cluster, tap: EventTap, experiment_id: str, crash: Crash, baseline: Baseline
) -> list[Record]:
    report = finish(cluster, experiment_id, baseline, bound_s=120)
    assert report.summary["state"] == "COMPLETED"
    final = report.records
    left = crash.records
    assert final[: len(left)] == left, "the restart changed what the dead searcher logged"
    applied = _applied(final)
    assert len(applied) == len(set(applied))  # the checker's I2, said here too
    tap.drain()
    missing = set(tap.seen) - set(applied)
    assert not missing, f"events the workers sent that are not in the log: {sorted(missing)}"
    return final


# ---------------------------------------------------------------- the scenarios
def test_the_disk_fills_up_under_a_running_search(tmp_path: Path, baseline: Baseline) -> None:
    with (
        small_disk(tmp_path / "state", DISK_BYTES) as disk,
        running_cluster(tmp_path) as cluster,
        event_tap(cluster) as tap,
    ):
        assert cluster.state_dir == disk
        # Only the searcher's files are on the small disk: the workers' runs (the last
        # --work-dir wins) and the checkpoints (by default under the state directory)
        # are elsewhere.
        cluster.start_worker("w1", 3, "--work-dir", str(tmp_path / "w1"))
        storage = f"checkpoint_storage: {{type: shared_fs, host_path: {tmp_path / 'ckpt'}}}\n"
        experiment_id = start_experiment(cluster, tmp_path, config_text() + storage)
        wait_events(cluster, experiment_id, "op_completed", 2)
        filler = fill_up(disk)
        crash = _crashed(cluster, tap, experiment_id, "No space left on device")
        # A record cut short by the full disk: its event was not acknowledged (when the
        # write got as far as its id; at a page boundary it may have got nowhere).
        if (torn := crash.torn_message_id()) is not None:
            assert torn in crash.waiting, f"{torn}, cut short in the log, was acknowledged"

        # Restarted too soon, on the disk still full: it stops the same way.
        cluster.start("searcher-full", "searcher", "--state-dir", str(cluster.state_dir))
        full = cluster.processes["searcher-full"]
        assert full.wait(60) == EXIT_STORAGE_FAILED, cluster.log_text("searcher-full")[-3000:]
        assert "storage failed" in cluster.log_text("searcher-full")
        if crash.torn:  # the first to open the log again cut the torn line off
            assert "dropping a torn last record" in cluster.log_text("searcher-full")

        filler.unlink()  # the operator frees space
        _restart(cluster, "searcher-2")
        _finished(cluster, tap, experiment_id, crash, baseline)


def test_an_fsync_fails_with_eio_under_a_running_search(
    tmp_path: Path, baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FSYNC_FAILURE_ENV, str(FAILING_FSYNC))  # for the first searcher
    with running_cluster(tmp_path) as cluster, event_tap(cluster) as tap:
        monkeypatch.delenv(FSYNC_FAILURE_ENV)  # and no other process
        cluster.start_worker("w1", 3)
        experiment_id = start_experiment(cluster, tmp_path)
        crash = _crashed(cluster, tap, experiment_id, f"injected by {FSYNC_FAILURE_ENV}")
        assert not crash.torn
        inputs = [r for r in crash.records if isinstance(r, InputRecord)]
        assert any(r.input and r.input.type == "op_completed" for r in inputs), "too early"
        # The last record was written, and its fsync failed (or had not run): never
        # durable, so its event was never acknowledged; the restart finds it a duplicate.
        assert inputs[-1].message_id in crash.waiting

        # Restarted on a disk that still fails, at its first fsync (while it recovers the
        # experiment): it stops the same way.
        failing = cluster.start(
            "searcher-failing",
            "searcher",
            "--state-dir",
            str(cluster.state_dir),
            env={FSYNC_FAILURE_ENV: "1"},
        )
        assert failing.wait(60) == EXIT_STORAGE_FAILED, cluster.log_text("searcher-failing")
        assert "storage failed" in cluster.log_text("searcher-failing")

        _restart(cluster, "searcher-2")
        final = _finished(cluster, tap, experiment_id, crash, baseline)
        assert len(final) > len(crash.records) + 10, "too late: the search was nearly over"
