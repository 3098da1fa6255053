"""Population-based training on a real cluster: a searcher and two workers on the local
RabbitMQ, the example's script in real processes. Every copy starts from its source's
checkpoint with its own hyperparameters, and the log explains and replays every clone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.checker import check_invariants

from .conftest import Cluster, read_log
from .pbt_scripts import CONTEXT, checkpoint_state, clones, first_saves, pbt_config

pytestmark = pytest.mark.rabbitmq

ASYNC_SEED = 1


@pytest.mark.parametrize("mode", ["synchronous", "asynchronous"])
def test_copies_continue_their_sources_checkpoints_with_new_hyperparameters(
    cluster: Cluster, tmp_path: Path, mode: str
) -> None:
    cluster.start_worker("w1", 2)
    cluster.start_worker("w2", 2)
    # Asynchronously a member is replaced when it reports last of the ranked and worst:
    # with the members in a race that happened in most runs, not all. One at a time, in
    # a fixed order and with fixed hyperparameters, it happens every time (the unit tests
    # cover the rule in every order).
    asynchronous = {"seed": ASYNC_SEED, "max_concurrent": 1} if mode == "asynchronous" else {}
    result = cluster.create(pbt_config(tmp_path, mode=mode, **asynchronous), CONTEXT)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED"
    experiment_id = summary["experiment_id"]
    records = read_log(summary["event_log"])
    copies = clones(records)
    if mode == "synchronous":
        # 4 members, 3 rounds: one replaced at the end of each of the first two.
        assert len(copies) == 2
        assert len(summary["trials"]) == 6
    assert copies, "no member was ever replaced"
    trial_of = {
        c["body"]["request_id"]: c["body"]["trial_id"]
        for r in records
        for c in r.get("commands", [])
        if c["body"]["type"] == "run_trial"
    }
    saves = first_saves(records)
    for create in copies:
        clone = create["clone"]
        trial_id = trial_of[create["request_id"]]
        # The script loaded the source's checkpoint: its first save continues the
        # source's state (its lineage ends with the source's entry) under the new lr.
        source = checkpoint_state(tmp_path, experiment_id, clone["checkpoint"])
        assert source["steps"] == clone["length"]
        assert source["lineage"][-1]["trial"] == clone["source_trial"]
        own = checkpoint_state(tmp_path, experiment_id, saves[trial_id]["uuid"])
        assert own["lineage"][:-1] == source["lineage"]
        assert own["lineage"][-1] == {
            "trial": trial_id,
            "from": clone["length"],
            "lr": create["hparams"]["lr"],
        }
        assert create["hparams"]["lr"] != clone["source_hparams"]["lr"]
    # describe --json gives each trial's parent; replay explains each clone.
    described = cluster.describe(experiment_id)
    parents = {
        t["trial_id"]: (t.get("lineage") or {}).get("source_trial") for t in described["trials"]
    }
    for create in copies:
        assert parents[trial_of[create["request_id"]]] == create["clone"]["source_trial"]
    replayed = cluster.rung("replay", summary["event_log"])
    assert replayed.returncode == 0, replayed.stderr
    first = copies[0]["clone"]
    assert f"continues from trial {first['source_trial']}'s checkpoint at length" in replayed.stdout
    check_invariants(cluster, experiment_id, bound_s=300, planned_trials=len(summary["trials"]))
