"""Helpers shared by the integration, end-to-end and fault tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest

AMQP_URL = os.environ.get("RUNG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RUN_ID = os.environ.get("RUNG_TEST_RUN_ID", f"local{os.getpid()}")


def unique_prefix() -> str:
    """Queue and exchange names no other test (or test run) uses."""
    return f"rungtest-{RUN_ID}-{uuid.uuid4().hex[:8]}"


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` holds, polling; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def wait_sync(
    predicate: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def delete_namespace(namespace: str) -> None:
    """Delete a test's queues and exchanges from the local RabbitMQ."""
    from rung.broker import RabbitBroker, Topology

    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="cleanup")
    await broker.start()
    try:
        await broker.delete_topology()
    finally:
        await broker.close()


def stop_processes(
    processes: Iterable[subprocess.Popen[bytes]], *, grace: float = 30.0, kill: bool = False
) -> None:
    """Signal every process (SIGTERM, or SIGKILL with ``kill``), then wait for each; one
    that outlives ``grace`` seconds is killed."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def fork_server_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A ``sitecustomize`` whose ``body`` every fork server started from now on runs as
    its interpreter starts, and no other process (the server starts from the worker's
    allowlisted environment: PYTHONPATH passes)."""
    site = tmp_path / "site"
    site.mkdir()
    guarded = textwrap.indent(textwrap.dedent(body), "    ")
    (site / "sitecustomize.py").write_text(
        f"import sys\nif 'rung.worker.forkserver' in sys.orig_argv:\n{guarded}\n"
    )
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    return site


def gated_fork_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``(gate, waiting)``: every fork server started from now on touches ``waiting`` as
    its interpreter starts, then waits (up to 60 s) until ``gate`` exists."""
    gate, waiting = tmp_path / "gate", tmp_path / "waiting"
    fork_server_site(
        tmp_path,
        monkeypatch,
        f"""
        import os, time
        open({str(waiting)!r}, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        """,
    )
    return gate, waiting
