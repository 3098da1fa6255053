"""The tutorial flow on a real cluster: a searcher and workers in separate processes,
meeting on the local RabbitMQ, running real training subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rung.searcher.eventlog import TRIAL_LOG_FILE, TrialLogStore
from tests.support import wait_sync

from .conftest import EXAMPLES, ROOT, Cluster, read_log

pytestmark = pytest.mark.rabbitmq


def _inputs(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r["input"] for r in log if r.get("input") and r["input"]["type"] == kind]


def test_3_hpsearch_completes_with_the_bracket_plan(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    result = cluster.create(EXAMPLES / "3_hpsearch.yaml")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 10
    log = read_log(summary["event_log"])
    commands = [c for r in log for c in (cmd["body"] for cmd in r.get("commands", []))]
    first_runs = {
        c["trial_id"]: c["length"]
        for c in commands
        if c["type"] == "run_trial" and c["attempt"] == 1
    }
    # Bracket 0: 7 trials with rungs at 25 and 100; bracket 1: 3 trials straight to 100.
    assert sorted(first_runs.values()) == [25] * 7 + [100] * 3
    # Every checkpoint and every completed operation is in the event log.
    checkpoints = _inputs(log, "checkpoint_saved")
    completions = _inputs(log, "op_completed")
    assert checkpoints
    assert len(completions) >= 10
    for trial in summary["trials"]:
        assert trial["state"] == "COMPLETED"
        assert trial["metric"] == trial["hparams"]["increment_by"] * trial["length"]
    # The best trial: the smallest x among the trials trained to 100.
    full = [t for t in summary["trials"] if t["length"] == 100]
    assert summary["best_trial"]["metric"] == min(t["metric"] for t in full)
    assert summary["best_trial"]["hparams"]["increment_by"] == min(
        t["hparams"]["increment_by"] for t in full
    )
    # Both workers ran trials.
    started = {e["worker_id"] for e in _inputs(log, "trial_started")}
    assert started == {"w1", "w2"}


def test_promoted_trials_resume_from_checkpoints_on_another_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Sequential promotion-based ASHA: trial 1 (increment 1, the best) pauses at 25; it is
    # promoted only once trial 2 reports, and by then its first worker has left.
    # Rungs at 50 and 100 (divisor 2): with two results, the better (the first, on a tie)
    # is promoted. Each batch takes 60 ms, so there is time to stop w1 in between.
    config = tmp_path / "resume.yaml"
    config.write_text(
        "name: resume\nentrypoint: python3 3_hpsearch.py\n"
        "hyperparameters: {increment_by: 1, batch_sleep: 0.06}\n"
        "searcher: {name: asha, metric: x, max_length: 100, max_trials: 2, num_rungs: 2, "
        "divisor: 2, max_concurrent_trials: 1}\nmax_restarts: 0\n"
    )
    cluster.start_worker("w1")
    created = cluster.create(config, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()

    def trial_one() -> dict[str, Any]:
        return next(t for t in cluster.describe(experiment_id)["trials"] if t["trial_id"] == 1)

    wait_sync(lambda: trial_one()["state"] == "PAUSED", 60, "trial 1 to pause")
    assert cluster.stop("w1") == 0  # a graceful exit: SIGTERM preempts what it runs
    cluster.start_worker("w2")
    wait_sync(
        lambda: cluster.describe(experiment_id)["state"] == "COMPLETED",
        120,
        "the experiment to complete",
    )
    summary = cluster.describe(experiment_id)
    log = read_log(summary["event_log"])
    runs = [
        c
        for r in log
        for c in (cmd["body"] for cmd in r.get("commands", []))
        if c["type"] == "run_trial" and c["trial_id"] == 1
    ]
    starts = [e for e in _inputs(log, "trial_started") if e["trial_id"] == 1]
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[0]["latest_checkpoint"] is None
    assert runs[1]["latest_checkpoint"] is not None  # resumed from its checkpoint
    assert [s["worker_id"] for s in starts] == ["w1", "w2"]
    metrics = [
        e for e in _inputs(log, "metrics_reported") if e["trial_id"] == 1 and e["attempt"] == 2
    ]
    assert min(m["steps_completed"] for m in metrics) > 50  # it did not start over
    trial = next(t for t in summary["trials"] if t["trial_id"] == 1)
    assert (trial["length"], trial["metric"]) == (100, 100.0)
    # get_experiment_best_validation() answers from the searcher: none before any result,
    # then the best result so far (50, trial 1's first).
    lines = _trial_lines(summary["event_log"])
    said = [line.rsplit(": ", 1)[1] for line in lines if "best validation so far" in line]
    assert said[0] == "None"
    assert "50.0" in said


def test_two_experiments_run_at_once(cluster: Cluster) -> None:
    cluster.start_worker("w1", slots=2)
    cluster.start_worker("w2", slots=2)
    first = cluster.rung("experiment", "create", str(EXAMPLES / "3_hpsearch.yaml"), str(EXAMPLES))
    second = cluster.rung(
        "experiment", "create", str(EXAMPLES / "2_checkpoints.yaml"), str(EXAMPLES)
    )
    assert first.returncode == second.returncode == 0
    ids = [first.stdout.strip(), second.stdout.strip()]
    wait_sync(
        lambda: all(cluster.describe(i)["state"] != "ACTIVE" for i in ids),
        100,
        "both experiments to finish",
    )
    assert [cluster.describe(i)["state"] for i in ids] == ["COMPLETED", "COMPLETED"]
    assert len(cluster.describe(ids[0])["trials"]) == 10
    # Stage 2 never asks for operations: it exits 0 early, a user-requested stop that
    # ends the trial (with a warning) and lets the experiment complete, as in Determined.
    (stage_2,) = cluster.describe(ids[1])["trials"]
    assert stage_2["state"] == "COMPLETED"


def test_a_missing_entrypoint_file_errors_the_trial_with_a_clear_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "missing.yaml"
    config.write_text(
        "entrypoint: python3 nope.py\nsearcher: {name: single, metric: x, "
        "max_length: 1}\nmax_restarts: 1\n"
    )
    cluster.start_worker("w1")
    result = cluster.create(config)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["state"] == "ERROR"
    assert summary["trials"][0]["state"] == "ERRORED"
    assert summary["trials"][0]["restarts"] == 2
    lines = _trial_lines(summary["event_log"])
    assert any(
        "entrypoint file 'nope.py' not found in the experiment context" in line for line in lines
    )


def test_an_invalid_config_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "entrypoint: python3 3_hpsearch.py\n"
        "searcher: {name: asha, metric: x, max_length: 10, max_trials: 0, "
        "num_rungs: 2}\n"
    )
    result = cluster.create(config)
    assert result.returncode == 2
    assert "searcher.max_trials: must be at least 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_lets_a_worker_drain(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    assert cluster.stop("w1", signal.SIGTERM) == 0
    assert "worker ready" in cluster.log_text("w1")


def test_logs_follow_prints_the_timeline_live_until_the_end(cluster: Cluster) -> None:
    created = cluster.create(EXAMPLES / "3_hpsearch.yaml", follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    out = cluster.logs / "follow.out"
    with out.open("w") as handle:
        follower = subprocess.Popen(
            [sys.executable, "-m", "rung", "e", "logs", experiment_id, "--follow", "--json"],
            stdout=handle,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
            cwd=ROOT,
        )
        try:
            # Once the follower has printed the history, the trials start running.
            wait_sync(
                lambda: "started: searcher adaptive_asha" in out.read_text(), 60, "the history"
            )
            cluster.start_worker("w1", slots=2)
            assert follower.wait(120) == 0  # it stops by itself when the experiment ends
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(10)
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(set(seqs))  # in order, none twice
    decisions = [d for e in entries for d in e["decisions"]]
    assert "experiment completed" in decisions
    assert any(d.startswith("trial ") and "promoted to rung 1" in d for d in decisions)
    assert (
        sum(e["event"].startswith("trial ") and "reached length" in e["event"] for e in entries)
        >= 10
    )


def _trial_lines(event_log: str) -> list[str]:
    """What the trials wrote: kept apart from the event log, beside it."""
    store = TrialLogStore(Path(event_log).with_name(TRIAL_LOG_FILE))
    return [str(line["text"]) for line in store.read(limit=10_000, max_bytes=1 << 30).lines]
