"""A training script that hangs is killed by its worker after the hang timeout, and the
restart rules apply: it is restarted up to max_restarts, then the trial errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, read_log
from tests.faults.checker import check_invariants

pytestmark = pytest.mark.rabbitmq

CONTEXT = Path(__file__).parent / "contexts" / "hang"


def test_a_hung_script_is_killed_and_restarted_then_errors(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "hang.yaml"
    config.write_text(
        "name: hang\nentrypoint: python3 train.py\n"
        "searcher: {name: single, metric: loss, max_length: 5}\nmax_restarts: 1\n"
    )
    cluster.start_worker("w1", 1, "--hang-timeout", "2")
    created = cluster.create(config, CONTEXT)
    summary: dict[str, Any] = json.loads(created.stdout)
    assert summary["state"] == "ERROR", created.stderr
    (trial,) = summary["trials"]
    assert trial["state"] == "ERRORED"
    assert trial["restarts"] == 2  # the first hang, the restart's hang: one more than allowed
    log = read_log(summary["event_log"])
    exits = [r["input"] for r in log if r.get("input") and r["input"]["type"] == "trial_exited"]
    assert [e["reason"] for e in exits] == ["ERRORED", "ERRORED"]
    for exited in exits:
        assert "no call to the Core API for 2 s (rung worker --hang-timeout)" in exited["message"]
    assert "killing a hung training process" in cluster.log_text("w1")
    check_invariants(cluster, summary["experiment_id"], bound_s=120, planned_trials=1)
