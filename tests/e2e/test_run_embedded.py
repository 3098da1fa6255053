"""``rung run``: the same flow in one command, on the in-process broker and on RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import AMQP_URL, fork_server_site, gated_fork_servers, wait_sync

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "core_api"


def run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNG_BROKER_URL"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rung",
            "run",
            str(EXAMPLES / "3_hpsearch.yaml"),
            str(EXAMPLES),
            "--workers",
            "2",
            "--state-dir",
            str(tmp_path / "state"),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 10
    assert set(summary) == {
        "experiment_id",
        "name",
        "owner",
        "state",
        "message",
        "waiting",
        "trials",
        "best_trial",
        "event_log",
    }
    for trial in summary["trials"]:
        assert set(trial) == {
            "trial_id",
            "hparams",
            "state",
            "length",
            "metric",
            "restarts",
            "lineage",  # population-based training's copies: null for these trials
        }
        assert trial["lineage"] is None
    full = [t for t in summary["trials"] if t["length"] == 100]
    assert summary["best_trial"]["metric"] == min(t["metric"] for t in full)
    assert Path(summary["event_log"]).is_file()


def test_rung_run_on_the_in_process_broker(tmp_path: Path) -> None:
    check(run(tmp_path))


@pytest.mark.rabbitmq
def test_rung_run_on_rabbitmq(tmp_path: Path) -> None:
    check(run(tmp_path, "--broker", AMQP_URL))


def test_a_worker_that_cannot_start_its_training_processes_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Said in one line, with the fix, before any trial is taken (none fails for it)."""
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    result = run(tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the fork server exited before it was ready")
    assert "--start-method exec (rung worker, rung run)" in error
    assert result.stdout == ""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_exec_start_method_needs_no_fork_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way round a fork server that cannot start, as its error says."""
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    check(run(tmp_path, "--start-method", "exec"))


def test_a_ctrl_c_while_the_workers_start_stops_the_run_before_it_begins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow fork server does not hold a Ctrl-C, and no experiment is made."""
    gate, waiting = gated_fork_servers(tmp_path, monkeypatch)
    env = {k: v for k, v in os.environ.items() if k != "RUNG_BROKER_URL"}
    state = tmp_path / "state"
    config, context = str(EXAMPLES / "3_hpsearch.yaml"), str(EXAMPLES)
    argv = [sys.executable, "-m", "rung", "run", config, context, "--state-dir", str(state)]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_sync(lambda: waiting.exists() or process.poll() is not None, 60, "a fork server")
        assert process.poll() is None, process.communicate()[1][-3000:]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)  # the gate is still shut
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err[-3000:]
    assert "interrupted before the run started" in err
    assert not any((state / "experiments").glob("*"))
