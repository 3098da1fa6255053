"""Trials on several workers at once (gang scheduling), on RabbitMQ with real searcher and
worker processes: the tutorial's stage 4 on two workers of four slots, and a gang that
waits for its slots while small trials keep running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.gang_scripts import gang_config, records_of, small_config
from tests.e2e.test_stage4 import STAGE4, _one_trial_to_the_end
from tests.support import wait_sync

pytestmark = pytest.mark.rabbitmq


def _inputs(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r.get("kind") == "input" and (r.get("input") or {}).get("type") == kind
    ]


def test_stage_4_on_two_workers_of_four_slots(cluster: Cluster) -> None:
    from tests.faults.checker import check_invariants

    cluster.start_worker("w-a", 4)
    cluster.start_worker("w-b", 4)
    experiment_id, trial = _one_trial_to_the_end(cluster, STAGE4, STAGE4.parent)
    # Every step adds the increments of all eight ranks, four on each worker.
    assert trial["metric"] == 100 * 8 * trial["hparams"]["increment_by"]
    records = records_of(cluster, experiment_id)
    (plan,) = _inputs(records, "gang_planned")
    assert sorted(p["worker_id"] for p in plan["input"]["parts"]) == ["w-a", "w-b"]
    assert [p["slots"] for p in plan["input"]["parts"]] == [4, 4]
    # Each worker started its part, in the slots it held.
    for name in ("w-a", "w-b"):
        assert "holding slots for a part of a trial on several workers" in cluster.log_text(name)
        assert '"event": "trial started"' in cluster.log_text(name)

    def rank_lines(rank: int) -> list[dict[str, Any]]:
        out = cluster.rung("trial", "logs", experiment_id, "1", "--rank", str(rank), "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    # Lines of both workers' ranks reach the trial's log, with their ranks.
    wait_sync(lambda: all(rank_lines(r) for r in (0, 4, 7)), 30, "ranks 0, 4 and 7's lines")
    assert any(str(x["text"]).startswith("x is now") for x in rank_lines(0))
    assert not any(str(x["text"]).startswith("x is now") for x in rank_lines(4))
    check_invariants(cluster, experiment_id, bound_s=180, planned_trials=1)


def test_a_gang_waits_for_its_slots_while_small_trials_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.faults.checker import check_invariants

    cluster.start_worker("w-a", 4)
    cluster.start_worker("w-b", 4)
    cluster.start_worker("w-c", 2)
    # Sixteen small trials on ten slots: ten run at once, six wait for slots.
    small_yaml = small_config(tmp_path, trials=16, sleep=6)
    small = cluster.create(small_yaml, tmp_path / "small", follow=False)
    assert small.returncode == 0, small.stderr
    small_id = small.stdout.strip()

    def running() -> int:
        return sum(t["state"] == "RUNNING" for t in cluster.describe(small_id)["trials"])

    wait_sync(lambda: running() >= 8, 60, "the small trials to fill the workers")
    gang = cluster.create(
        gang_config(tmp_path, slots=8, length=20, sleep=0.05), tmp_path / "gang", follow=False
    )
    assert gang.returncode == 0, gang.stderr
    gang_id = gang.stdout.strip()
    for experiment_id in (gang_id, small_id):
        done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "COMPLETED"
    gang_records = records_of(cluster, gang_id)
    (plan,) = _inputs(gang_records, "gang_planned")
    gang_workers = sorted(p["worker_id"] for p in plan["input"]["parts"])
    assert gang_workers == ["w-a", "w-b"]  # the fewest workers: equal parts of four
    started = [r for r in _inputs(gang_records, "trial_started") if not r["ignored"]]
    assert len(started) == 2  # a start of each part, taken
    gang_start = max(r["at"] for r in started)
    assert cluster.describe(gang_id)["trials"][0]["metric"] == 8 * 20
    # Small trials were not preempted for the gang: their slots came to it as they ended.
    small_records = records_of(cluster, small_id)
    small_exits = [r["input"]["reason"] for r in _inputs(small_records, "trial_exited")]
    assert len(small_exits) == 16
    assert set(small_exits) == {"COMPLETED"}
    small_starts = [
        (r["at"], r["input"]["worker_id"])
        for r in _inputs(small_records, "trial_started")
        if not r["ignored"]
    ]
    # Once the gang was planned, no small trial took a slot on its workers until its parts
    # started (the slots were held for it), and small trials kept running on the third.
    held = [w for at, w in small_starts if plan["at"] < at < gang_start and w in gang_workers]
    assert not held, f"small trials started on the gang's workers while it waited: {held}"
    beside = [at for at, w in small_starts if w == "w-c" and at > plan["at"]]
    assert beside, "no small trial ran beside the waiting gang"
    assert gang_start < max(at for at, _ in small_starts), "the gang waited for every small trial"
    check_invariants(cluster, gang_id, bound_s=180, planned_trials=1)
    check_invariants(cluster, small_id, bound_s=180, planned_trials=16)
