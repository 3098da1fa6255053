"""A real cluster in real processes: one searcher and workers on the local RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import AMQP_URL, delete_namespace, stop_processes, unique_prefix, wait_sync

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "core_api"


@dataclass
class Cluster:
    namespace: str
    state_dir: Path
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    files: list[Any] = field(default_factory=list)
    # Where the long-running services (searcher, workers) connect: a fault proxy, say.
    # Short commands (``rung experiment ...``) always connect to the broker directly.
    service_url: str = AMQP_URL

    def env(self) -> dict[str, str]:
        # A wide terminal for the tables that commands print (rich wraps cells to fit).
        return {
            **os.environ,
            "RUNG_BROKER_URL": AMQP_URL,
            "RUNG_NAMESPACE": self.namespace,
            "COLUMNS": "200",
        }

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self.files.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "rung", "--log-format", "json", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env(), "RUNG_BROKER_URL": self.service_url, **(env or {})},
            cwd=ROOT,
        )
        self.processes[name] = process
        return process

    def start_worker(
        self, name: str, slots: int = 1, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        # A trial gets an allowlisted environment: the variables that steer the fault
        # tests' stub (RUNG_FAULT_DIR, ...) are passed on by name, as an operator would.
        passed = [
            a for k in sorted(env or {}) if k.startswith("RUNG_FAULT_") for a in ("--trial-env", k)
        ]
        process = self.start(
            name,
            "worker",
            "--slots",
            str(slots),
            "--gpus",
            "none",
            "--id",
            name,
            "--work-dir",
            str(self.state_dir / name),
            *passed,
            *extra,
            env=env,
        )
        self.wait_log(name, "worker ready")
        return process

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout: float = 30) -> None:
        wait_sync(lambda: text in self.log_text(name), timeout, f"{text!r} in {name}'s log")

    def rung(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rung", *args],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )

    def create(
        self, config: Path, context: Path = EXAMPLES, *, follow: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = ["experiment", "create", str(config), str(context)]
        return self.rung(*args, *(["--follow", "--json"] if follow else []))

    def describe(self, experiment_id: str) -> dict[str, Any]:
        result = self.rung("e", "describe", experiment_id, "--json")
        assert result.returncode == 0, result.stderr
        described: dict[str, Any] = json.loads(result.stdout)
        return described

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def running_cluster(
    tmp_path: Path, *searcher_args: str, service_url: str = AMQP_URL
) -> Iterator[Cluster]:
    """A searcher process on a namespace of its own; workers are started by the test."""
    namespace = unique_prefix()
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(namespace, tmp_path / "state", logs, service_url=service_url)
    instance.start("searcher", "searcher", "--state-dir", str(instance.state_dir), *searcher_args)
    instance.wait_log("searcher", "searcher ready")
    try:
        yield instance
    finally:
        stop_processes(instance.processes.values())
        for handle in instance.files:
            handle.close()
        _run_blocking(lambda: delete_namespace(namespace))


def _run_blocking(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to the end, also from inside a running loop (an async test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(make())
        return
    worker = threading.Thread(target=lambda: asyncio.run(make()))
    worker.start()
    worker.join()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as instance:
        yield instance
