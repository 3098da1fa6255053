"""Population-based training through the searcher service, on both brokers: a clone's
run_trial carries its source's checkpoint, the service times a round that a trial never
finishes, and a round_timeout from the wire is refused."""

from __future__ import annotations

from pathlib import Path

from rung.broker import DEAD_REASON_HEADER, Broker
from rung.broker.schemas import (
    CheckpointSaved,
    OpCompleted,
    RoundTimeout,
    RunTrial,
    TrialStarted,
)
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import InputRecord, read_log, replay
from rung.searcher.service.service import SearcherService
from tests.integration.test_broker_conformance import collect
from tests.integration.test_searcher_service import FakeWorker, context, service
from tests.support import wait_for
from tests.unit.searcher.helpers import pbt_searcher

__all__ = ["service"]  # the fixture, shared with test_searcher_service

CHECKPOINT = "7f4f9c1e-3b1a-4c55-9d55-0a6f1f1e2d3c"

PBT = {
    "entrypoint": "python3 train.py",
    "hyperparameters": {"lr": {"type": "log", "minval": -3, "maxval": 0, "base": 10}},
    "searcher": pbt_searcher(2, 2, 5, 0.5, resample=0.0, metric="loss", round_timeout=1),
}


async def test_a_round_that_a_trial_never_finishes_times_out_and_a_clone_takes_over(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    created = await client.create_experiment(PBT, context(tmp_path, {"train.py": "pass\n"}))
    experiment_id = created["experiment_id"]
    await wait_for(lambda: len(worker.work) == 2, 10, "the population's run_trial commands")
    first = next(run for run in worker.work if run.trial_id == 1)
    ids = {
        "experiment_id": experiment_id,
        "trial_id": 1,
        "attempt": first.attempt,
        "worker_id": "fake",
    }
    await worker.send(TrialStarted(**ids, slots=1))
    await worker.send(
        CheckpointSaved(
            **ids,
            uuid=CHECKPOINT,
            steps_completed=5,
            metadata={"steps_completed": 5},
            size_bytes=1,
        )
    )
    await worker.send(OpCompleted(**ids, length=5, metric=0.25))
    # Trial 2 never starts: after round_timeout (1 s) the round ends without it, and a
    # copy of trial 1 takes its place, from trial 1's checkpoint.
    await wait_for(
        lambda: any(run.trial_id == 3 for run in worker.work), 15, "the clone's run_trial"
    )
    clone = next(run for run in worker.work if run.trial_id == 3)
    assert isinstance(clone, RunTrial)
    assert clone.latest_checkpoint == CHECKPOINT
    assert clone.length == 10
    assert clone.hparams["lr"] != first.hparams["lr"]
    records = read_log(Path(created["event_log"]))
    (timeout,) = [
        r for r in records if isinstance(r, InputRecord) and isinstance(r.input, RoundTimeout)
    ]
    assert timeout.message_id == f"{experiment_id}/timer/round/0/1"
    assert timeout.notes is not None
    assert any("round 0 timed out" in note and "trial 2" in note for note in timeout.notes)
    assert replay(records, verify=True).divergence is None
    # A round_timeout on the wire is refused: only the searcher's clock decides.
    dead = await collect(broker, broker.topology.dead_queue)
    await worker.send(RoundTimeout(experiment_id=experiment_id, round=1, after_s=99))
    await wait_for(lambda: len(dead) == 1, 10, "the refused round_timeout")
    assert b"round_timeout" in dead[0].body
    assert "timer input" in str(dead[0].headers[DEAD_REASON_HEADER])
