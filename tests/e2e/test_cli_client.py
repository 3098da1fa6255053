"""The CLI commands built on the client, in real processes, their ``--json`` parsed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import EXAMPLES, Cluster
from tests.support import delete_namespace, unique_prefix

pytestmark = pytest.mark.rabbitmq

CONFIG = (
    "name: cli\nlabels: [cli-test]\nentrypoint: python3 3_hpsearch.py\n"
    "hyperparameters: {increment_by: {type: int, minval: 1, maxval: 9}, batch_sleep: 0.01}\n"
    "searcher: {name: asha, metric: x, max_length: 40, max_trials: 3, num_rungs: 2, "
    "divisor: 2}\nmax_restarts: 0\n"
)


def _json(cluster: Cluster, *args: str) -> Any:
    done = cluster.rung(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_experiment_trial_and_worker_commands(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(CONFIG)
    cluster.start_worker("w1", 2)
    created = _json(cluster, "experiment", "create", str(config), str(EXAMPLES))
    experiment_id = created["experiment_id"]
    assert experiment_id.startswith("exp-")

    waited = _json(cluster, "e", "wait", experiment_id)
    assert set(waited) == {
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
    assert waited["state"] == "COMPLETED"
    assert _json(cluster, "e", "describe", experiment_id) == waited

    listed = _json(cluster, "e", "list", "--label", "cli-test", "--state", "COMPLETED")
    assert [e["experiment_id"] for e in listed] == [experiment_id]
    assert listed[0]["labels"] == ["cli-test"]
    trials = _json(cluster, "e", "list-trials", experiment_id)
    assert [t["trial_id"] for t in trials] == [1, 2, 3]
    assert all(t["latest_checkpoint"] for t in trials)
    checkpoints = _json(cluster, "e", "list-checkpoints", experiment_id)
    assert {t["latest_checkpoint"] for t in trials} <= {c["uuid"] for c in checkpoints}

    best = waited["best_trial"]["trial_id"]
    trial = _json(cluster, "t", "describe", experiment_id, str(best))
    assert trial["trial_id"] == best
    assert trial["metric"] == waited["best_trial"]["metric"]
    lines = [json.loads(line) for line in _lines(cluster, "t", "logs", experiment_id, str(best))]
    assert any("best validation so far" in line["text"] for line in lines)
    killed = _json(cluster, "trial", "kill", experiment_id, str(best))
    assert killed["state"] == "COMPLETED"  # it had ended: the kill changes nothing

    (worker,) = _json(cluster, "worker", "list")
    assert worker["worker_id"] == "w1"
    assert worker["slots"] == 2


def test_exit_codes(cluster: Cluster, tmp_path: Path) -> None:
    missing = cluster.rung("e", "describe", "exp-nope")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == "error: no experiment 'exp-nope'"
    bad = tmp_path / "bad.yaml"
    bad.write_text("entrypoint: python3 3_hpsearch.py\nsearcher: {name: asha, metric: x}\n")
    refused = cluster.rung("e", "create", str(bad), str(EXAMPLES))
    assert refused.returncode == 2
    assert "searcher.max_length" in refused.stderr or "max_length" in refused.stderr
    assert "Traceback" not in refused.stderr
    unreachable = cluster.rung(
        "e", "list", "--broker", "amqp://guest:guest@127.0.0.1:1/", "--timeout", "1"
    )
    assert unreachable.returncode == 3
    assert "error: cannot reach the broker at amqp://guest:******@127.0.0.1:1/" in (
        unreachable.stderr
    )
    nobody = unique_prefix()
    try:
        no_searcher = cluster.rung("e", "list", "--namespace", nobody, "--timeout", "1")
    finally:
        asyncio.run(delete_namespace(nobody))
    assert no_searcher.returncode == 3
    assert f"is a searcher running on this broker, with namespace {nobody!r}" in (
        no_searcher.stderr
    )


def _lines(cluster: Cluster, *args: str) -> list[str]:
    done = cluster.rung(*args, "--json")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()
