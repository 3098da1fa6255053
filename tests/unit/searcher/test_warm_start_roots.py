"""Warm starts across per-experiment checkpoint roots: ``searcher.source_checkpoint_uuid``
names a checkpoint another experiment saved under its own root; the searcher finds that
experiment among those the creator may read, logs its root in the ``created`` record
(``warm_start_root``), and the trials' ``RunTrial`` carries it as ``source_root``, in the
live searcher and after a replay alike."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rung.broker import MemoryBroker, Topology
from rung.broker.archive import pack
from rung.broker.port import Delivery
from rung.broker.schemas import (
    CheckpointSaved,
    CreateExperiment,
    ExitReason,
    OpCompleted,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body, Envelope, encode
from rung.searcher.eventlog import CreatedRecord, InputRecord, read_log, replay
from rung.searcher.eventlog.records import record_adapter
from rung.searcher.eventlog.replay import build_run
from rung.searcher.experiment import Experiment
from rung.searcher.methods import RULES, SingleSearch
from rung.searcher.service.creation import warm_start_root
from rung.searcher.service.errors import RequestRefusedError
from rung.searcher.service.service import SearcherService
from rung.searcher.trials import ExperimentRun

from .helpers import make_config

SEARCHER = "rung-searcher"
WORKER = "rung-worker"
SOURCE = "22222222-2222-4222-8222-222222222222"
GOLDEN = Path(__file__).resolve().parents[2] / "golden"


def _run(experiment_id: str) -> ExperimentRun:
    config = make_config("{name: single, max_length: 5}", entrypoint="python3 train.py")
    return ExperimentRun(
        experiment_id,
        Experiment(config),
        context_hash="0" * 64,
        checkpoint_root=f"/ckpt/{experiment_id}",
    )


def test_the_source_is_the_checkpoint_of_the_experiment_that_saved_it() -> None:
    saver, starter, other = _run("exp-a"), _run("exp-b"), _run("exp-c")
    for run in (saver, starter, other):
        run.start()
    saver.by_id[1].checkpoints[SOURCE] = 5
    # A trial that warm-started from it has it as its latest checkpoint, not as its own.
    starter.by_id[1].latest_checkpoint = SOURCE
    # While the saver runs, its checkpoint policy may still delete the source: refused.
    with pytest.raises(RequestRefusedError, match="still ACTIVE"):
        warm_start_root(SOURCE, [starter, other, saver])
    saver.state = "COMPLETED"
    assert warm_start_root(SOURCE, [starter, other, saver]) == "/ckpt/exp-a"
    assert warm_start_root(SOURCE, [starter, other]) is None
    assert warm_start_root(SOURCE, []) is None


# ---------------------------------------------------------------------- the service
class _Delivery(Delivery):
    async def ack(self) -> None:
        self.settled = True

    async def requeue(self) -> None:
        self.settled = True

    async def _move_to_dead_queue(self, reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


def _delivery(body: Body, user: str | None, message_id: str) -> _Delivery:
    envelope = Envelope(message_id=message_id, body=body)
    return _Delivery(encode(envelope), message_id=message_id, user_id=user)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SearcherService]:
    """A service on the in-memory broker, as if a broker vouched for users."""
    broker = MemoryBroker(Topology("warm"))
    broker.username = SEARCHER
    await broker.start()
    instance = SearcherService(broker, tmp_path / "state", admins=frozenset({"root"}))
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    await asyncio.wait_for(instance.ready.wait(), 10)
    yield instance
    stop.set()
    await task
    await broker.close()


def _config(source: str | None = None) -> dict[str, Any]:
    searcher: dict[str, Any] = {"name": "single", "metric": "loss", "max_length": 3}
    if source is not None:
        searcher["source_checkpoint_uuid"] = source
    return {"entrypoint": "python3 train.py", "searcher": searcher}


def _request(tmp_path: Path, source: str | None = None) -> CreateExperiment:
    directory = tmp_path / "context"
    directory.mkdir(exist_ok=True)
    (directory / "train.py").write_text("pass\n")
    data = base64.b64encode(pack(directory)).decode()
    return CreateExperiment(config=_config(source), context_b64=data)


async def _create(service: SearcherService, body: CreateExperiment, user: str) -> str:
    """Create as ``user``; each request has its own key (message id)."""
    key = f"c-{user}-{len(service.experiments)}"
    answer = await service.requests.handle(body, _delivery(body, user, key), user)
    return str(answer["experiment_id"])


async def _saves_source(service: SearcherService, experiment_id: str) -> None:
    """The worker runs the experiment's trial 1, which saves checkpoint SOURCE as its
    last, and the experiment completes (a running one's policy could still delete it)."""
    common = {"experiment_id": experiment_id, "trial_id": 1, "attempt": 1, "worker_id": WORKER}
    token = service.live(experiment_id).host.run.start_token(1, 1)  # the run_trial's
    events: list[Body] = [
        TrialStarted(**common, slots=1, start_token=token),
        CheckpointSaved(
            **common, uuid=SOURCE, steps_completed=3, metadata={"steps_completed": 3}, size_bytes=1
        ),
        OpCompleted(**common, length=3, metric=0.5),
        TrialExited(**common, reason=ExitReason.COMPLETED, exit_code=0),
    ]
    for n, body in enumerate(events):
        message_id = f"{WORKER}/s1/{experiment_id}-{n}"
        await service.intake.on_event(_delivery(body, WORKER, message_id))
    run = service.live(experiment_id).host.run
    assert SOURCE in run.by_id[1].checkpoints
    assert run.state == "COMPLETED"


def _first_run_trial(path: Path) -> RunTrial:
    records = read_log(path)
    for index in range(1, len(records)):
        record = records[index]
        if isinstance(record, InputRecord):
            for command in record.commands:
                if isinstance(command.body, RunTrial):
                    return command.body
    raise AssertionError(f"no run_trial in {path}")


async def test_a_warm_start_finds_the_root_of_the_experiment_that_saved_its_source(
    service: SearcherService, tmp_path: Path
) -> None:
    source_experiment = await _create(service, _request(tmp_path), "alice")
    await _saves_source(service, source_experiment)
    source_root = service.live(source_experiment).host.run.checkpoint_root
    assert source_root.endswith(f"/{source_experiment}")

    follow_up = await _create(service, _request(tmp_path, SOURCE), "alice")
    host = service.live(follow_up).host
    assert host.run.warm_start_root == source_root
    assert host.run.checkpoint_root.endswith(f"/{follow_up}")
    # Logged in the created record, and sent with the trial's first attempt.
    created = read_log(host.log.path)[0]
    assert isinstance(created, CreatedRecord)
    assert created.warm_start_root == source_root
    command = _first_run_trial(host.log.path)
    assert (command.latest_checkpoint, command.source_root) == (SOURCE, source_root)
    assert command.checkpoint_root == host.run.checkpoint_root

    # An admin may warm-start from anyone's checkpoint.
    admins = await _create(service, _request(tmp_path, SOURCE), "root")
    assert service.live(admins).host.run.warm_start_root == source_root


async def test_a_warm_start_from_a_checkpoint_nobody_saved_is_refused(
    service: SearcherService, tmp_path: Path
) -> None:
    with pytest.raises(RequestRefusedError) as refused:
        await _create(service, _request(tmp_path, SOURCE), "alice")
    message = str(refused.value)
    assert message.startswith("searcher.source_checkpoint_uuid: no experiment you may read")
    assert SOURCE in message
    assert "leave source_checkpoint_uuid out" in message
    assert [p.path for p in refused.value.problems] == ["searcher.source_checkpoint_uuid"]
    assert not service.experiments  # nothing was created


async def test_a_warm_start_from_another_users_checkpoint_is_refused(
    service: SearcherService, tmp_path: Path
) -> None:
    source_experiment = await _create(service, _request(tmp_path), "alice")
    await _saves_source(service, source_experiment)
    with pytest.raises(RequestRefusedError, match="no experiment you may read saved checkpoint"):
        await _create(service, _request(tmp_path, SOURCE), "bob")
    assert list(service.experiments) == [source_experiment]


# ---------------------------------------------------------------------- the log
async def test_replay_gives_the_trials_the_same_source_root(
    service: SearcherService, tmp_path: Path
) -> None:
    source_experiment = await _create(service, _request(tmp_path), "alice")
    await _saves_source(service, source_experiment)
    follow_up = await _create(service, _request(tmp_path, SOURCE), "alice")
    path = service.live(follow_up).host.log.path
    replayed = replay(read_log(path), verify=True)
    assert replayed.divergence is None
    assert replayed.run.warm_start_root == service.live(follow_up).host.run.warm_start_root
    assert replayed.run.warm_start_root is not None


async def test_an_experiment_decides_by_the_rules_it_was_created_under(
    service: SearcherService, tmp_path: Path
) -> None:
    """The created record names the search methods' rules (issue 18's rules 2); one
    without them, as every log written before, is rebuilt under rules 1."""
    experiment = await _create(service, _request(tmp_path), "alice")
    created = read_log(service.live(experiment).host.log.path)[0]
    assert isinstance(created, CreatedRecord)
    assert created.rules == RULES == 2
    method = service.live(experiment).host.run.experiment.method
    assert isinstance(method, SingleSearch)
    assert method.rules == RULES
    assert json.loads(created.model_dump_json())["rules"] == RULES
    older = created.model_copy(update={"rules": None})
    assert "rules" not in json.loads(older.model_dump_json())
    rebuilt = build_run(older, None).experiment.method
    assert isinstance(rebuilt, SingleSearch)
    assert rebuilt.rules == 1


def test_the_created_record_round_trips_its_warm_start_root() -> None:
    base: dict[str, Any] = {
        "seq": 1,
        "experiment_id": "exp-1",
        "config": {},
        "context_hash": "0" * 64,
        "checkpoint_root": "/ckpt/exp-1",
    }
    record = CreatedRecord(**base, warm_start_root="/ckpt/exp-0")
    line = record.model_dump_json()
    assert json.loads(line)["warm_start_root"] == "/ckpt/exp-0"
    assert record_adapter.validate_json(line) == record
    # Without a warm start it is written as before the field existed.
    plain = CreatedRecord(**base)
    assert "warm_start_root" not in json.loads(plain.model_dump_json())


@pytest.mark.parametrize("name", ["single", "random", "asha", "grid", "adaptive_asha", "failed"])
def test_older_created_records_parse_and_are_written_back_without_it(name: str) -> None:
    first = (GOLDEN / f"{name}.v1.jsonl").read_bytes().split(b"\n", 1)[0]
    record = record_adapter.validate_json(first)
    assert isinstance(record, CreatedRecord)
    assert record.warm_start_root is None
    # Written back as it was (older goldens predate ``request_key``, written as "").
    assert json.loads(record.model_dump_json()) == {"request_key": "", **json.loads(first)}
