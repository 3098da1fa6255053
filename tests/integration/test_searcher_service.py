"""The searcher service with a scripted fake worker, on both brokers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rung.broker import DEAD_REASON_HEADER, Broker, Delivery
from rung.broker.errors import BrokerUnavailableError
from rung.broker.schemas import (
    CloseTrial,
    ControlExperiment,
    Envelope,
    ExitReason,
    KillTrial,
    OpCompleted,
    PreemptTrial,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import FileEventLog, InputRecord, read_log, replay
from rung.searcher.service.service import SearcherService
from tests.integration.test_broker_conformance import collect
from tests.support import wait_for


class FakeWorker:
    def __init__(self, broker: Broker, worker_id: str = "fake") -> None:
        self.broker = broker
        self.worker_id = worker_id
        self.work: list[RunTrial] = []
        self.control: list[Body] = []
        self.control_ids: list[str] = []
        self.seq = 0

    async def start(self) -> None:
        t = self.broker.topology
        queue = await self.broker.declare_private_queue(
            (t.commands_exchange, t.worker_key(self.worker_id))
        )

        async def on_work(delivery: Delivery) -> None:
            body = decode(delivery.body).body
            assert isinstance(body, RunTrial)
            self.work.append(body)
            await delivery.ack()

        async def on_control(delivery: Delivery) -> None:
            envelope = decode(delivery.body)
            self.control.append(envelope.body)
            self.control_ids.append(envelope.message_id)
            await delivery.ack()

        await self.broker.subscribe(t.work_queue, on_work, prefetch=10)
        await self.broker.subscribe(queue, on_control, prefetch=10)

    async def send(self, body: Body, message_id: str | None = None) -> str:
        """Publish an event (again, when given the id it was first sent under). A start
        echoes the start token of the run_trial it answers, as a real worker does; an
        event's id is under the worker id it names (the searcher requires it)."""
        if isinstance(body, TrialStarted) and body.start_token is None:
            attempt = (body.experiment_id, body.trial_id, body.attempt)
            for run in self.work:
                if (run.experiment_id, run.trial_id, run.attempt) == attempt:
                    body = body.model_copy(update={"start_token": run.start_token})
        if message_id is None:
            self.seq += 1
            message_id = f"{getattr(body, 'worker_id', self.worker_id)}/s/{self.seq}"
        t = self.broker.topology
        envelope = Envelope(message_id=message_id, body=body)
        await self.broker.publish(
            t.events_exchange, t.EVENTS_KEY, encode(envelope), message_id=envelope.message_id
        )
        return message_id


@pytest.fixture
async def service(broker: Broker, tmp_path: Path) -> AsyncIterator[SearcherService]:
    instance = SearcherService(broker, tmp_path / "state")
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    contexts = tmp_path / "state" / "contexts"
    await wait_for(contexts.is_dir, 10, "the service")
    yield instance
    stop.set()
    await task


SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


def context(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "context"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


async def single_trial_queued(
    broker: Broker, tmp_path: Path
) -> tuple[FakeWorker, SearcherClient, dict[str, Any]]:
    """A one-trial experiment whose run_trial the fake worker has received."""
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial command")
    return worker, client, created


async def _complete(worker: FakeWorker, experiment_id: str) -> Body:
    """The queued trial starts, completes its length of 3 (loss 0.25) and exits; returns
    the command the searcher answered its completion with."""
    run = worker.work[0]
    ids = {
        "experiment_id": experiment_id,
        "trial_id": run.trial_id,
        "attempt": run.attempt,
        "worker_id": "fake",
    }
    await worker.send(TrialStarted(**ids, slots=1))
    await worker.send(OpCompleted(**ids, length=3, metric=0.25))
    await wait_for(lambda: len(worker.control) == 1, 10, "the close command")
    await worker.send(TrialExited(**ids, reason=ExitReason.COMPLETED))
    return worker.control[0]


async def test_one_trial_from_create_to_completed(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker, client, created = await single_trial_queued(broker, tmp_path)
    experiment_id = created["experiment_id"]
    assert isinstance(await _complete(worker, experiment_id), CloseTrial)
    summary = await client.wait(experiment_id, poll_s=0.05, timeout=20)
    assert summary.state == "COMPLETED"
    assert summary.best_trial is not None
    assert summary.best_trial.metric == 0.25
    # The log holds each decision before its command went out: the command's id names the
    # record that decided it.
    records = [json.loads(line) for line in Path(created["event_log"]).read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "input" and r["input"] is None)
    assert start["commands"][0]["body"]["type"] == "run_trial"
    kinds = [r["input"]["type"] for r in records if r["kind"] == "input" and r["input"]]
    assert kinds == ["trial_started", "op_completed", "trial_exited"]


BROKEN = textwrap.dedent("""
    from pydantic import BaseModel
    from rung.searcher.methods import SearchMethod
    from rung.searcher.ops import ValidateAfter

    class State(BaseModel):
        pass

    class Broken(SearchMethod[State]):
        name = "broken"
        State = State

        def __init__(self, config):
            self.state = State()

        def initial_operations(self, ctx):
            create = ctx.create()
            return [create, ValidateAfter(request_id=create.request_id, length=1)]

        def validation_completed(self, ctx, request_id, metric, length):
            return [ValidateAfter(request_id="ghost", length=2)]

        def trial_exited_early(self, ctx, request_id, reason):
            return []

        def progress(self, ctx):
            return 0.0
""")


async def test_a_broken_search_method_fails_only_its_experiment(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    created = await client.create_experiment(
        {
            "entrypoint": "python3 train.py",
            "searcher": {"name": "custom", "class": "broken:Broken"},
        },
        context(tmp_path, {"train.py": "pass\n", "broken.py": BROKEN}),
    )
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial command")
    run = worker.work[0]
    ids = {
        "experiment_id": created["experiment_id"],
        "trial_id": 1,
        "attempt": run.attempt,
        "worker_id": "fake",
    }
    await worker.send(TrialStarted(**ids, slots=1))
    await worker.send(OpCompleted(**ids, length=1, metric=0.0))
    summary = await client.wait(created["experiment_id"], poll_s=0.05, timeout=20)
    assert summary.state == "ERROR"
    records = Path(created["event_log"]).read_text()
    assert "ValidateAfter for unknown request ghost" in records
    # The service is still up: a new experiment is accepted.
    again = await client.create_experiment(
        SINGLE,
        tmp_path / "context",
    )
    assert again["experiment_id"] != created["experiment_id"]


async def test_a_searcher_stops_acting_when_another_takes_the_experiment_over(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker, _, created = await single_trial_queued(broker, tmp_path)
    # Another searcher (on another machine, sharing the directory) takes the log over.
    other = FileEventLog(Path(created["event_log"]))
    other.take_over("elsewhere/1")
    size = Path(created["event_log"]).stat().st_size
    run = worker.work[0]
    await worker.send(
        TrialStarted(
            experiment_id=created["experiment_id"],
            trial_id=1,
            attempt=run.attempt,
            worker_id="fake",
            slots=1,
        )
    )
    await wait_for(
        lambda: created["experiment_id"] not in service.experiments,
        10,
        "the searcher to give the experiment up",
    )
    assert Path(created["event_log"]).stat().st_size == size  # it wrote nothing more
    other.close()


async def single_trial_started(
    broker: Broker, tmp_path: Path
) -> tuple[FakeWorker, SearcherClient, dict[str, Any]]:
    """A one-trial experiment whose trial the fake worker has started (attempt 1)."""
    worker, client, created = await single_trial_queued(broker, tmp_path)
    await worker.send(
        TrialStarted(
            experiment_id=created["experiment_id"],
            trial_id=1,
            attempt=1,
            worker_id="fake",
            slots=1,
        )
    )
    return worker, client, created


async def test_pause_activate_and_cancel_are_logged_and_reach_the_worker(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker, client, created = await single_trial_started(broker, tmp_path)
    experiment_id = created["experiment_id"]
    ids = {"experiment_id": experiment_id, "trial_id": 1, "worker_id": "fake"}
    await wait_for(
        lambda: len(service.experiments[experiment_id].host.run.by_id[1].worker_id or "") > 0,
        10,
        "start",
    )

    paused = await client.control(experiment_id, "pause")
    assert paused == {"experiment_id": experiment_id, "state": "PAUSED", "ignored": None}
    await wait_for(lambda: len(worker.control) == 1, 10, "the preempt command")
    assert isinstance(worker.control[0], PreemptTrial)
    again = await client.control(experiment_id, "pause")
    assert again["ignored"] == "pause: the experiment is paused already"
    await worker.send(TrialExited(**ids, attempt=1, reason=ExitReason.PREEMPTED))
    await wait_for(
        lambda: service.experiments[experiment_id].host.run.by_id[1].state == "PAUSED",
        10,
        "the trial held",
    )
    assert len(worker.work) == 1  # nothing runs while paused

    activated = await client.control(experiment_id, "activate")
    assert activated["state"] == "ACTIVE"
    await wait_for(lambda: len(worker.work) == 2, 10, "the trial resumed")
    assert worker.work[1].attempt == 2
    await worker.send(TrialStarted(**ids, attempt=2, slots=1))

    canceled = await client.control(experiment_id, "cancel")
    assert canceled["state"] == "STOPPING_CANCELED"
    await wait_for(lambda: len(worker.control) == 2, 10, "the second preempt command")
    await worker.send(TrialExited(**ids, attempt=2, reason=ExitReason.PREEMPTED))
    summary = await client.wait(experiment_id, poll_s=0.05, timeout=20)
    assert summary.state == "CANCELED"
    assert [t.state for t in summary.trials] == ["CANCELED"]
    # Every control went into the log as an input, in order, and the log verifies.
    records = read_log(Path(created["event_log"]))
    actions = [
        r.input.action
        for r in records
        if isinstance(r, InputRecord) and isinstance(r.input, ControlExperiment)
    ]
    assert actions == ["pause", "pause", "activate", "cancel"]
    assert replay(records, verify=True).divergence is None


@pytest.fixture
async def quick_timeout_service(broker: Broker, tmp_path: Path) -> AsyncIterator[SearcherService]:
    instance = SearcherService(broker, tmp_path / "state", worker_timeout_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    await wait_for((tmp_path / "state" / "contexts").is_dir, 10, "the service")
    yield instance
    stop.set()
    await task


async def test_a_silent_worker_is_declared_lost_and_its_trial_resumes(
    broker: Broker, quick_timeout_service: SearcherService, tmp_path: Path
) -> None:
    worker, _, created = await single_trial_started(broker, tmp_path)
    experiment_id = created["experiment_id"]
    # The worker sends nothing more: after 0.5 s of silence it is lost, and the trial is
    # queued again as attempt 2 (which the same fake worker takes from the work queue).
    await wait_for(lambda: len(worker.work) == 2, 10, "the trial queued again")
    assert worker.work[1].attempt == 2
    await wait_for(lambda: len(worker.control) == 1, 10, "the kill for the lost attempt")
    assert isinstance(worker.control[0], KillTrial)
    records = read_log(Path(created["event_log"]))
    timers = [r for r in records if isinstance(r, InputRecord) and isinstance(r.input, WorkerLost)]
    assert len(timers) == 1
    assert timers[0].message_id == f"{experiment_id}/timer/worker-lost/fake/1.1"
    assert replay(records, verify=True).divergence is None
    # A worker_lost on the wire is refused: only the searcher's clock decides.
    dead = await collect(broker, broker.topology.dead_queue)
    await worker.send(WorkerLost(experiment_id=experiment_id, worker_id="fake", silent_s=1))
    await wait_for(lambda: len(dead) == 1, 10, "the refused worker_lost")
    assert b"worker_lost" in dead[0].body
    assert "timer input" in str(dead[0].headers[DEAD_REASON_HEADER])


async def test_heartbeats_on_their_own_queue_keep_a_quiet_worker_alive(
    broker: Broker, quick_timeout_service: SearcherService, tmp_path: Path
) -> None:
    worker, _, created = await single_trial_started(broker, tmp_path)
    experiment_id = created["experiment_id"]
    topology = broker.topology
    beat = WorkerHeartbeat(worker_id="fake", slots=1, free_slots=0, running=["x"])

    async def heartbeat() -> None:
        envelope = Envelope(message_id=f"fake/beat/{asyncio.get_running_loop().time()}", body=beat)
        await broker.publish(
            topology.events_exchange,
            topology.HEARTBEAT_KEY,
            encode(envelope),
            message_id=envelope.message_id,
        )

    # Beating every 0.1 s for 6 timeouts (0.5 s each): the trial stays where it is.
    await heartbeat()
    await wait_for(lambda: "fake" in quick_timeout_service.workers.beats, 10, "the first heartbeat")
    for _ in range(30):
        await heartbeat()
        await asyncio.sleep(0.1)  # the beat's own period, not a wait for a condition
    assert len(worker.work) == 1
    assert quick_timeout_service.experiments[experiment_id].host.run.by_id[1].state == "RUNNING"
    # Silence: the worker is lost, and the trial is queued again.
    await wait_for(lambda: len(worker.work) == 2, 10, "the trial queued again")


async def test_commands_that_could_not_be_published_go_out_once_the_broker_is_back(
    broker: Broker, quick_timeout_service: SearcherService, tmp_path: Path
) -> None:
    worker = FakeWorker(broker)
    await worker.start()
    real_publish = broker.publish
    down = True

    async def flaky_publish(exchange: str, routing_key: str, body: bytes, **kw: Any) -> None:
        if down and exchange == broker.topology.commands_exchange:
            raise BrokerUnavailableError("the connection to the broker is down (test)")
        await real_publish(exchange, routing_key, body, **kw)

    broker.publish = flaky_publish  # type: ignore[method-assign]
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    # The decision is logged; its run_trial waits in the service, not lost.
    records = read_log(Path(created["event_log"]))
    assert any(isinstance(r, InputRecord) and r.commands for r in records)
    live = quick_timeout_service.experiments[created["experiment_id"]]
    assert live.host.outbox
    assert live.retrying
    assert worker.work == []
    down = False
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial, sent by the timer")
    assert worker.work[0].attempt == 1


async def test_commands_still_waiting_when_the_searcher_dies_go_out_after_its_restart(
    broker: Broker, tmp_path: Path
) -> None:
    worker = FakeWorker(broker)
    await worker.start()
    real_publish = broker.publish

    async def commands_down(exchange: str, routing_key: str, body: bytes, **kw: Any) -> None:
        if exchange == broker.topology.commands_exchange:
            raise BrokerUnavailableError("the connection to the broker is down (test)")
        await real_publish(exchange, routing_key, body, **kw)

    first = SearcherService(broker, tmp_path / "state", worker_timeout_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await wait_for((tmp_path / "state" / "contexts").is_dir, 10, "the service")
    broker.publish = commands_down  # type: ignore[method-assign]
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    experiment_id = created["experiment_id"]
    path = Path(created["event_log"])
    # A later input without commands: the run_trial is no longer the last decision.
    progress = {"experiment_id": experiment_id, "trial_id": 1, "attempt": 1, "worker_id": "fake"}
    await worker.send(ProgressReported(**progress, units=0))
    await wait_for(lambda: len(read_log(path)) == 4, 10, "the progress input logged")
    assert (path.parent / "unsent.json").exists()
    # The searcher dies with the run_trial still waiting in its memory.
    stop.set()
    await task
    broker.publish = real_publish  # type: ignore[method-assign]
    assert worker.work == []

    second = SearcherService(broker, tmp_path / "state", worker_timeout_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial, re-sent on restart")
        assert worker.work[0].attempt == 1
        await wait_for(lambda: not (path.parent / "unsent.json").exists(), 10, "the mark cleared")
    finally:
        stop.set()
        await task


async def test_a_command_to_a_gone_worker_ends_its_attempt_once(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    worker, client, created = await single_trial_queued(broker, tmp_path)
    experiment_id = created["experiment_id"]
    # The trial starts on a worker that has no control queue any more (it died).
    await worker.send(
        TrialStarted(experiment_id=experiment_id, trial_id=1, attempt=1, worker_id="gone", slots=1)
    )
    await wait_for(
        lambda: service.experiments[experiment_id].host.run.by_id[1].worker_id == "gone",
        10,
        "start",
    )
    # Pausing sends a preempt to it: unroutable, so the attempt ends there and then.
    await client.control(experiment_id, "pause")
    await wait_for(
        lambda: service.experiments[experiment_id].host.run.by_id[1].state == "PAUSED",
        10,
        "the trial held",
    )
    await client.control(experiment_id, "activate")
    await wait_for(lambda: len(worker.work) == 2, 10, "the trial resumed")
    assert worker.work[1].attempt == 2
    records = read_log(Path(created["event_log"]))
    ids = [r.message_id for r in records if isinstance(r, InputRecord)]
    assert ids.count("lost/1/1") == 1
    assert replay(records, verify=True).divergence is None


@contextlib.asynccontextmanager
async def searcher_on(broker: Broker, state: Path) -> AsyncIterator[SearcherService]:
    instance = SearcherService(broker, state, worker_timeout_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    try:
        await wait_for((state / "contexts").is_dir, 10, "the service")
        yield instance
    finally:
        stop.set()
        await task


async def answer_lost(
    broker: Broker, tmp_path: Path
) -> tuple[FakeWorker, OpCompleted, str, list[bytes], dict[str, Any]]:
    """A trial completed its operation, and the searcher's answer (close) was confirmed
    by the broker but never reached the worker: lost with the worker's private queue."""
    worker = FakeWorker(broker)
    await worker.start()
    real_publish = broker.publish
    lost: list[bytes] = []

    async def lose_the_first_answer(
        exchange: str, routing_key: str, body: bytes, **kw: Any
    ) -> None:
        if routing_key == broker.topology.worker_key("fake") and not lost:
            lost.append(body)
            return
        await real_publish(exchange, routing_key, body, **kw)

    broker.publish = lose_the_first_answer  # type: ignore[method-assign]
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial command")
    ids = {"experiment_id": created["experiment_id"], "trial_id": 1, "attempt": 1}
    await worker.send(TrialStarted(**ids, worker_id="fake", slots=1))
    completion = OpCompleted(**ids, worker_id="fake", length=3, metric=0.25)
    completion_id = await worker.send(completion)
    await wait_for(lambda: len(lost) == 1, 10, "the close command, lost")
    assert worker.control == []
    return worker, completion, completion_id, lost, created


async def test_a_lost_answer_is_sent_again_when_the_trial_asks_again(
    broker: Broker, tmp_path: Path
) -> None:
    async with searcher_on(broker, tmp_path / "state"):
        worker, completion, completion_id, lost, created = await answer_lost(broker, tmp_path)
        path = Path(created["event_log"])
        logged = len(read_log(path))
        # The trial asks again: the same command comes, under the id it was logged with.
        await worker.send(completion, message_id=completion_id)
        await wait_for(lambda: len(worker.control) == 1, 10, "the close command, again")
        assert isinstance(worker.control[0], CloseTrial)
        assert decode(lost[0]).message_id == worker.control_ids[0]
        # Asking again is not an input: the log is unchanged.
        assert len(read_log(path)) == logged
        # A completion of another attempt, asked twice, is answered with nothing.
        stale = completion.model_copy(update={"attempt": 7})
        await worker.send(stale, message_id="fake/stale")
        await worker.send(stale, message_id="fake/stale")
        ids = {"experiment_id": created["experiment_id"], "trial_id": 1, "attempt": 1}
        await worker.send(TrialExited(**ids, worker_id="fake", reason=ExitReason.COMPLETED))
        summary = await SearcherClient(broker).wait(ids["experiment_id"], poll_s=0.05, timeout=20)
        assert summary.state == "COMPLETED"
        assert len(worker.control) == 1
        assert replay(read_log(path), verify=True).divergence is None


async def test_a_restarted_searcher_answers_again_from_its_log(
    broker: Broker, tmp_path: Path
) -> None:
    async with searcher_on(broker, tmp_path / "state"):
        worker, completion, completion_id, lost, created = await answer_lost(broker, tmp_path)
        # A later input without commands: a restart re-sends nothing of its own accord.
        ids = completion.model_dump(include={"experiment_id", "trial_id", "attempt", "worker_id"})
        await worker.send(ProgressReported(**ids, units=3))
        path = Path(created["event_log"])
        await wait_for(lambda: len(read_log(path)) == 6, 10, "the progress logged")
    async with searcher_on(broker, tmp_path / "state") as second:
        await wait_for(lambda: len(second.experiments) == 1, 10, "the experiment recovered")
        assert len(next(iter(second.experiments.values())).host.answers) == 1
        assert worker.control == []
        await worker.send(completion, message_id=completion_id)
        await wait_for(lambda: len(worker.control) == 1, 10, "the close command, after restart")
        assert decode(lost[0]).message_id == worker.control_ids[0]


async def test_an_input_without_commands_syncs_outside_the_lock_before_its_ack(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    """Most inputs cause no command: they are applied under the lock and made durable
    after it, so that other inputs go on meanwhile; the ack still waits for the disk."""
    worker, _, created = await single_trial_queued(broker, tmp_path)
    live = service.experiments[created["experiment_id"]]
    event_log = live.host.log
    released = asyncio.Event()
    real_sync = event_log.sync_async

    async def slow_disk() -> None:
        await released.wait()
        await real_sync()

    event_log.sync_async = slow_disk  # type: ignore[method-assign]
    before = event_log.seq
    await worker.send(TrialStarted(**created_ids(created), worker_id="fake", slots=1))
    await wait_for(lambda: event_log.seq == before + 1, 10, "the trial_started applied")
    # Applied and waiting for the disk, outside the lock: not acknowledged yet.
    assert not live.lock.locked()
    assert event_log.durable_seq < event_log.seq
    assert service.intake.handling == 1
    released.set()
    await wait_for(lambda: service.intake.handling == 0, 10, "the input acknowledged")
    assert event_log.durable_seq == event_log.seq


def created_ids(created: dict[str, Any]) -> dict[str, Any]:
    return {"experiment_id": created["experiment_id"], "trial_id": 1, "attempt": 1}


def _summaries_asked(service: SearcherService) -> list[bool]:
    """Whether each summary the service makes from now on has the trials."""
    asked: list[bool] = []
    summary = service.summary

    def spy(experiment_id: str, *, with_trials: bool = True) -> Any:
        asked.append(with_trials)
        return summary(experiment_id, with_trials=with_trials)

    service.summary = spy  # type: ignore[method-assign]
    return asked


async def test_a_waiter_polls_without_the_trials_and_ends_with_them(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    """A waiter's polls cost the searcher little whatever the trials' number; what
    ``wait`` returns is the whole summary."""
    asked = _summaries_asked(service)
    worker, client, created = await single_trial_queued(broker, tmp_path)
    experiment_id = created["experiment_id"]
    waiting = asyncio.create_task(client.wait(experiment_id, poll_s=0.05, timeout=30))
    await wait_for(lambda: len(asked) >= 3, 10, "the waiter's polls")
    polled = await client.describe(experiment_id, trials=False)
    assert polled.trials == []
    assert polled.state == "ACTIVE"
    await _complete(worker, experiment_id)
    ended = await asyncio.wait_for(waiting, 30)
    assert ended.state == "COMPLETED"
    assert [t.metric for t in ended.trials] == [0.25]
    assert asked[-1] is True  # the whole summary, once ended
    assert not any(asked[:-1])  # every poll before it: without the trials


async def test_a_waiter_for_the_state_alone_never_asks_for_the_trials(
    broker: Broker, service: SearcherService, tmp_path: Path
) -> None:
    """``Experiment.wait()`` returns the state only: none of its describes asks for the
    trials, the last one included."""
    asked = _summaries_asked(service)
    worker, client, created = await single_trial_queued(broker, tmp_path)
    experiment_id = created["experiment_id"]
    waiting = asyncio.create_task(client.wait(experiment_id, poll_s=0.05, timeout=30, whole=False))
    await wait_for(lambda: len(asked) >= 2, 10, "the waiter's polls")
    await _complete(worker, experiment_id)
    ended = await asyncio.wait_for(waiting, 30)
    assert ended.state == "COMPLETED"
    assert ended.trials == []
    assert asked
    assert not any(asked)
