"""Checkpoint garbage collection on a real cluster: the searcher decides, a worker deletes,
and what the policy keeps is what is left on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_sync

from .conftest import Cluster, read_log

pytestmark = pytest.mark.rabbitmq


def _inputs(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r["input"] for r in log if r.get("input") and r["input"]["type"] == kind]


def test_checkpoints_the_policy_does_not_keep_are_deleted_from_disk(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Two trials (x = increment_by * batches, smaller is better), each checkpointing at 10,
    # 20 and 30 batches and validating at 30: the experiment's best checkpoint is trial
    # 2's last one (increment 2), and the policy keeps nothing else.
    storage = tmp_path / "checkpoints"
    config = tmp_path / "gc.yaml"
    config.write_text(
        "name: gc\nentrypoint: python3 3_hpsearch.py\n"
        "hyperparameters: {increment_by: {type: categorical, vals: [5, 2]}}\n"
        "searcher: {name: grid, metric: x, max_length: 30, max_concurrent_trials: 1}\n"
        "max_restarts: 0\n"
        f"checkpoint_storage: {{type: shared_fs, host_path: {storage}, "
        "save_experiment_best: 1, save_trial_best: 0, save_trial_latest: 0}\n"
    )
    cluster.start_worker("w1")
    result = cluster.create(config)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED"
    experiment_id = summary["experiment_id"]
    log = read_log(summary["event_log"])

    root = storage / experiment_id  # the experiment's own checkpoint root
    saved = {
        c["uuid"]: (c["trial_id"], c["steps_completed"]) for c in _inputs(log, "checkpoint_saved")
    }
    assert sorted(saved.values()) == [(t, s) for t in (1, 2) for s in (10, 20, 30)]
    deletions = [
        c["body"]
        for r in log
        for c in r.get("commands", [])
        if c["body"]["type"] == "delete_checkpoints"
    ]
    assert all(d["checkpoint_root"] == str(root) for d in deletions)
    deleted = {u for d in deletions for u in d["uuids"]}
    (best,) = [u for u, where in saved.items() if where == (2, 30)]
    assert deleted == set(saved) - {best}

    def on_disk() -> set[str]:
        return {p.name for p in root.iterdir()} if root.is_dir() else set()

    wait_sync(lambda: on_disk() == {best}, 60, "the worker to delete what the policy drops")
    assert json.loads((root / best / "metadata.json").read_text())["steps_completed"] == 30
    assert "checkpoints deleted" in cluster.log_text("w1")
