"""Options of the `rung` command that need no broker: passwords from files, health."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rung.cli.common import broker_url, log_tasks
from rung.cli.services import healthcheck


def _args(url: str | None, password_file: Path | None) -> argparse.Namespace:
    return argparse.Namespace(broker=url, broker_password_file=password_file)


def test_a_password_file_goes_into_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss/word\n")  # a mounted secret often ends with a newline
    url = broker_url(_args("amqps://rung-worker@rabbit:5671/rung", secret))
    assert url == "amqps://rung-worker:p%40ss%2Fword@rabbit:5671/rung"
    assert broker_url(_args("amqp://u:old@[::1]/v", secret)) == "amqp://u:p%40ss%2Fword@[::1]/v"
    assert broker_url(_args("amqp://u:pw@h/v", None)) == "amqp://u:pw@h/v"


def test_a_password_file_that_cannot_be_read_or_used_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read it"):
        broker_url(_args("amqp://u@h/v", tmp_path / "missing"))
    secret = tmp_path / "password"
    secret.write_text("x")
    with pytest.raises(SystemExit, match="needs a user in the broker URL"):
        broker_url(_args("amqp://h/v", secret))


def test_healthcheck_reads_the_health_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    health = tmp_path / "health"

    def check(max_age: float = 60.0) -> int:
        # The handler itself: rung.cli.main would configure logging for the whole process.
        return healthcheck(argparse.Namespace(file=health, max_age=max_age))

    assert check() == 1
    assert "does not exist" in capsys.readouterr().err
    health.touch()
    assert check() == 0
    old = time.time() - 120
    os.utime(health, (old, old))
    assert check() == 1
    assert "last touched 120 s ago" in capsys.readouterr().err


async def test_sigusr1_logs_what_each_task_waits_on() -> None:
    never = asyncio.Event()

    async def stuck_somewhere() -> None:
        await never.wait()

    task = asyncio.create_task(stuck_somewhere(), name="the-stuck-one")
    await asyncio.sleep(0)  # let it reach its await
    with capture_logs() as logs:
        log_tasks()
    task.cancel()
    dumps = {entry["task"]: entry["stack"] for entry in logs}
    assert "stuck_somewhere" in dumps["the-stuck-one"]


def test_trial_logs_rank_takes_a_rank_and_refuses_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rung.cli.main import build_parser

    parser = build_parser()
    base = ["trial", "logs", "exp-1", "3", "--broker", "amqp://h/v"]
    assert parser.parse_args([*base, "--rank", "2"]).rank == 2
    assert parser.parse_args(base).rank is None
    for bad in ("x", "-1", "10000", "²"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--rank", bad])
        assert "give a whole number from 0 to 9999" in capsys.readouterr().err
