"""The searcher's edges, on both brokers: a search that raises, a create sent twice, a
log that cannot be replayed, publishes that block, and requests for what is not there.

Each test here failed on 987ddd5 (issue 15)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from rung.broker import DEAD_REASON_HEADER, Broker
from rung.broker.archive import pack
from rung.broker.errors import PublishTimeoutError
from rung.broker.schemas import (
    CloseTrial,
    CreateExperiment,
    Envelope,
    ExitReason,
    KillTrial,
    OpCompleted,
    ProgressReported,
    RpcReply,
    TrialExited,
    TrialStarted,
    decode,
    encode,
)
from rung.client import NotFoundError, RefusedError
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import InputRecord, read_log, replay
from rung.searcher.eventlog.file import StaleOwnerError
from rung.searcher.host import ExperimentHost
from rung.searcher.service.service import SearcherService
from rung.searcher.service.summary import summarise
from tests.integration.test_broker_conformance import collect
from tests.integration.test_searcher_service import SINGLE, FakeWorker, context
from tests.support import wait_for

FRAGILE = textwrap.dedent("""
    from pydantic import BaseModel
    from rung.searcher.methods.one_shot import OneShotSearch

    class State(BaseModel):
        created: int = 0

    class Fragile(OneShotSearch[State]):
        name = "fragile"
        State = State

        def __init__(self, config):
            self.max_length, self.max_trials, self.max_concurrent = 4, 4, 2
            self.state = State()

        def total_trials(self):
            return self.max_trials

        def next_trial(self, ctx):
            if self.state.created >= self.max_trials:
                return None
            self.state.created += 1
            return ctx.create()

        def validation_completed(self, ctx, request_id, metric, length):
            if metric > 0.9:
                raise ValueError(f"metric {metric} is above 0.9")
            return []
""")

FRAGILE_CONFIG = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "custom", "class": "fragile:Fragile", "metric": "loss"},
    "max_restarts": 3,
}


@pytest.fixture
async def searcher(broker: Broker, tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Start (and restart) a searcher on one state directory; stopped at the end."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start() -> SearcherService:
        for stop, task in running:
            stop.set()
            await task
        running.clear()
        instance = SearcherService(broker, tmp_path / "state", worker_timeout_s=60)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(instance.run(stop))))
        await wait_for(instance.ready.is_set, 10, "the service")
        return instance

    yield start
    for stop, task in running:
        stop.set()
        await task


def is_command_of(experiment_id: str, publish_kw: dict[str, Any]) -> bool:
    """A command the searcher publishes for the experiment (not a live-feed record)."""
    message_id = publish_kw.get("message_id") or ""
    return message_id.startswith(f"{experiment_id}/") and "/record/" not in message_id


def ids(experiment_id: str, trial_id: int, attempt: int = 1) -> dict[str, Any]:
    return {
        "experiment_id": experiment_id,
        "trial_id": trial_id,
        "attempt": attempt,
        "worker_id": "fake",
    }


@contextlib.asynccontextmanager
async def held_commands(
    broker: Broker, experiment_id: str, *, refuse_first: bool = False
) -> AsyncIterator[list[str]]:
    """Hold every publish of the experiment's commands (their message ids are listed as
    they come) until the block ends, as a broker slow to confirm does; with
    ``refuse_first``, the first one fails at once with a publish timeout."""
    real_publish = broker.publish
    release = asyncio.Event()
    held: list[str] = []

    async def holding_publish(exchange: str, routing_key: str, body: bytes, **kw: Any) -> None:
        if is_command_of(experiment_id, kw):
            held.append(kw["message_id"])
            if refuse_first and len(held) == 1:
                raise PublishTimeoutError("the broker did not confirm in time (test)")
            await release.wait()
        await real_publish(exchange, routing_key, body, **kw)

    broker.publish = holding_publish  # type: ignore[method-assign]
    try:
        yield held
    finally:
        release.set()
        broker.publish = real_publish  # type: ignore[method-assign]


async def one_trial_running(broker: Broker, tmp_path: Path) -> tuple[FakeWorker, str]:
    """A single-trial experiment whose trial has started on a fake worker."""
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    eid: str = created["experiment_id"]
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial")
    await worker.send(TrialStarted(**ids(eid, 1), slots=1))
    return worker, eid


async def two_trials_running(
    broker: Broker, tmp_path: Path
) -> tuple[FakeWorker, SearcherClient, dict[str, Any]]:
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    files = {"train.py": "pass\n", "fragile.py": FRAGILE}
    created = await client.create_experiment(FRAGILE_CONFIG, context(tmp_path, files))
    await wait_for(lambda: len(worker.work) == 2, 10, "two run_trial commands")
    for run in worker.work:
        await worker.send(TrialStarted(**ids(created["experiment_id"], run.trial_id), slots=1))
    return worker, client, created


async def test_a_search_that_raises_stops_its_trials_and_can_still_be_killed(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    service: SearcherService = await searcher()
    worker, client, created = await two_trials_running(broker, tmp_path)
    eid = created["experiment_id"]
    await worker.send(OpCompleted(**ids(eid, 1), length=4, metric=2.0))
    # The failure kills both running trials, on their worker.
    await wait_for(lambda: len(worker.control) == 2, 10, "the kills")
    kills = [c for c in worker.control if isinstance(c, KillTrial)]
    assert sorted(c.trial_id for c in kills) == [1, 2]
    summary = await client.describe(eid)
    assert summary.state == "ERROR"
    assert summary.message == "the experiment failed: ValueError: metric 2.0 is above 0.9"
    assert {t.state for t in summary.trials} == {"CANCELED"}
    # Trial 2 crashes before its kill lands: it is not queued again.
    await worker.send(TrialExited(**ids(eid, 2), reason=ExitReason.ERRORED, exit_code=1))
    # A user's kill is carried out, not refused: trial 1 has not exited, it is killed again.
    answer = await client.control(eid, "kill")
    assert answer["ignored"] is None
    await wait_for(lambda: len(worker.control) == 3, 10, "the second kill")
    assert isinstance(worker.control[2], KillTrial)
    assert worker.control[2].trial_id == 1
    assert len(worker.work) == 2
    # What the searcher shows is what its log replays to.
    live = service.experiments[eid].host
    replayed = replay(read_log(live.log.path), context_root=tmp_path / "state" / "contexts").run
    assert replayed.snapshot() == live.run.snapshot()
    path = str(live.log.path)
    assert summarise(replayed, path) == summarise(live.run, path)
    # And the searcher serves other experiments.
    other = await client.create_experiment(SINGLE, tmp_path / "context")
    await wait_for(lambda: len(worker.work) == 3, 10, "the other experiment's trial")
    assert worker.work[2].experiment_id == other["experiment_id"]


async def test_a_create_sent_again_answers_with_the_same_experiment(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    await searcher()
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    directory = context(tmp_path, {"train.py": "pass\n"})
    first = await client.create_experiment(SINGLE, directory, key="nightly-42")
    again = await client.create_experiment(SINGLE, directory, key="nightly-42")
    assert again["experiment_id"] == first["experiment_id"]
    other = await client.create_experiment(SINGLE, directory, key="nightly-43")
    assert other["experiment_id"] != first["experiment_id"]
    # After a restart too: the key is in the experiment's log.
    restarted: SearcherService = await searcher()
    after = await client.create_experiment(SINGLE, directory, key="nightly-42")
    assert after["experiment_id"] == first["experiment_id"]
    assert len(restarted.experiments) == 2
    await wait_for(lambda: len(worker.work) >= 2, 10, "one run_trial per experiment")
    assert sorted({w.experiment_id for w in worker.work}) == sorted(
        [first["experiment_id"], other["experiment_id"]]
    )


async def test_a_log_that_cannot_be_replayed_fails_its_experiment_only(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    await searcher()
    worker, client, created = await two_trials_running(broker, tmp_path)
    eid = created["experiment_id"]
    healthy = await client.create_experiment(SINGLE, tmp_path / "context")
    await wait_for(lambda: len(worker.work) == 3, 10, "the healthy experiment's trial")
    # Its log names a search method that is gone: the experiment cannot be rebuilt.
    path = Path(created["event_log"])
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"class":"fragile:Fragile"', '"class":"gone_on_purpose:Gone"')
    path.write_text("\n".join(lines) + "\n")
    restarted: SearcherService = await searcher()
    assert eid in restarted.broken
    summary = await client.describe(eid)
    assert summary.state == "ERROR"
    assert "could not be recovered" in summary.message
    assert "gone_on_purpose" in summary.message
    listed = {s.experiment_id: s.state for s in await client.list_experiments()}
    assert listed[eid] == "ERROR"
    # A trial of it that reports is told to stop, and its event is kept in the
    # dead-letter queue for a searcher that recovers it; the healthy experiment goes on.
    dead = await collect(broker, broker.topology.dead_queue)
    await worker.send(ProgressReported(**ids(eid, 1), units=1))
    await wait_for(lambda: any(isinstance(c, KillTrial) for c in worker.control), 10, "kill")
    await wait_for(lambda: len(dead) == 1, 10, "the event, kept")
    assert "could not be recovered" in str(dead[0].headers[DEAD_REASON_HEADER])
    hid = healthy["experiment_id"]
    await worker.send(TrialStarted(**ids(hid, 1), slots=1))
    await worker.send(OpCompleted(**ids(hid, 1), length=3, metric=0.1))
    await wait_for(lambda: len(worker.control) == 2, 10, "the healthy trial's close")
    with pytest.raises(NotFoundError, match="could not be recovered"):
        await client.control(eid, "pause")


async def test_a_blocked_experiment_never_holds_up_another_nor_its_own_log_only_inputs(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """While one experiment's commands cannot be published (the broker never confirms,
    as under a resource alarm), every input of other experiments is applied, logged and
    acknowledged as usual, and so are the blocked experiment's own inputs once the outbox
    has taken its decision over: no input retries a publish or waits for it for good."""
    service: SearcherService = await searcher()
    service.outbox.input_wait_s = 0.2
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    directory = context(tmp_path, {"train.py": "pass\n"})
    blocked = await client.create_experiment(SINGLE, directory)
    other = await client.create_experiment(SINGLE, directory)
    await wait_for(lambda: len(worker.work) == 2, 10, "both run_trial commands")
    bid, oid = blocked["experiment_id"], other["experiment_id"]
    for eid in (bid, oid):
        await worker.send(TrialStarted(**ids(eid, 1), slots=1))
    # A broker that does not confirm (a resource alarm) the blocked experiment's commands.
    async with held_commands(broker, bid) as attempts:
        # The blocked experiment's decision (close its trial) waits for the broker.
        await worker.send(OpCompleted(**ids(bid, 1), length=3, metric=0.1))
        await wait_for(lambda: len(attempts) == 1, 10, "the blocked publish")
        blocked_log = service.experiments[bid].host.log
        other_log = service.experiments[oid].host.log
        # Five inputs that cause no command, for each experiment: all applied and durable
        # while the publish is still blocked.
        before_blocked, before_other = blocked_log.seq, other_log.seq
        for units in range(5):
            await worker.send(ProgressReported(**ids(oid, 1), units=units))
            await worker.send(ProgressReported(**ids(bid, 1), units=units))
        await wait_for(
            lambda: other_log.durable_seq >= before_other + 5, 10, "the other's five inputs"
        )
        await wait_for(
            lambda: blocked_log.durable_seq >= before_blocked + 5, 10, "its own five inputs"
        )
        # The other experiment's decisions go out at once.
        await worker.send(OpCompleted(**ids(oid, 1), length=3, metric=0.1))
        await wait_for(lambda: len(worker.control) == 1, 10, "the other's close command")
        assert worker.control_ids[0].startswith(f"{oid}/")
        # (its own inputs no longer wait for the lock, so this may come before 0.2 s)
        await wait_for(lambda: service.experiments[bid].retrying, 10, "the retry task")
    await wait_for(lambda: len(worker.control) == 2, 10, "the blocked close, once released")
    assert worker.control_ids[1].startswith(f"{bid}/")
    assert len(attempts) == 1  # the one publish went on; no input tried another


async def test_an_experiments_inputs_apply_while_its_decision_waits_for_its_confirms(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """The experiment's lock covers the apply only: while a decision's publish waits for
    the broker (here held, short of the time the outbox leaves it to the retry task),
    the experiment's next inputs are applied, made durable and acknowledged, and each of
    their records names the decision that waits, for a restart to send it again."""
    service: SearcherService = await searcher()
    service.outbox.input_wait_s = 60  # the decision's own input waits for it throughout
    worker, eid = await one_trial_running(broker, tmp_path)
    live = service.experiments[eid]
    await wait_for(lambda: not live.host.outbox, 10, "the start's commands confirmed")
    async with held_commands(broker, eid) as held:  # confirms that take their time
        await worker.send(OpCompleted(**ids(eid, 1), length=3, metric=0.1))  # -> close
        await wait_for(lambda: len(held) == 1, 10, "the close's publish, held")
        [waiting] = live.host.outbox
        before = live.host.log.durable_seq
        for units in range(3):
            await worker.send(ProgressReported(**ids(eid, 1), units=units))
        await wait_for(
            lambda: live.host.log.durable_seq >= before + 3, 10, "three inputs, applied meanwhile"
        )
        assert not live.retrying  # its own input still waits for it; no retry task
        assert [o.seq for o in live.host.outbox] == [waiting.seq]
        later = [
            r
            for r in read_log(live.host.log.path)
            if isinstance(r, InputRecord) and r.seq > waiting.seq
        ]
        assert len(later) == 3
        assert {r.unconfirmed_from for r in later} == {waiting.seq}
        assert worker.control == []
    await wait_for(lambda: len(worker.control) == 1, 10, "the close, once confirmed")
    assert isinstance(worker.control[0], CloseTrial)
    await wait_for(lambda: not live.host.outbox, 10, "the outbox empty")
    assert held == [worker.control_ids[0]]  # published once


async def test_a_request_for_what_does_not_exist_gets_a_typed_not_found(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    await searcher()
    client = SearcherClient(broker)
    with pytest.raises(NotFoundError, match="no experiment 'exp-nothere'"):
        await client.describe("exp-nothere")
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    with pytest.raises(NotFoundError, match="has no trial 7"):
        await client.control_trial(created["experiment_id"], 7)


async def test_a_bug_in_a_request_handler_is_not_reported_as_not_found(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """A KeyError from a bug is a bug: the request is dead-lettered with the error after
    the broker's delivery limit, not answered with "no experiment"."""
    service: SearcherService = await searcher()
    client = SearcherClient(broker, timeout=3)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))

    def buggy(experiment_id: str, *, with_trials: bool = True) -> Any:
        raise KeyError("a bug")

    service.summary = buggy  # type: ignore[method-assign]
    dead = await collect(broker, broker.topology.dead_queue)
    with pytest.raises(Exception, match="no answer to describe_experiment") as caught:
        await client.describe(created["experiment_id"])
    assert not isinstance(caught.value, NotFoundError)
    await wait_for(lambda: len(dead) == 1, 20, "the request, dead-lettered")
    assert "KeyError" in str(dead[0].headers[DEAD_REASON_HEADER])


async def test_once_a_decision_waits_for_the_broker_its_experiments_inputs_never_publish(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """The probe of issue 15: a publish that fails makes the experiment's decisions wait
    for the outbox's retry task; from then on its inputs are applied, logged and
    acknowledged without touching the broker. Here every later publish hangs for good: an
    input that tried one would never be acknowledged."""
    service: SearcherService = await searcher()
    worker, eid = await one_trial_running(broker, tmp_path)
    async with held_commands(broker, eid, refuse_first=True):
        await worker.send(OpCompleted(**ids(eid, 1), length=3, metric=0.1))
        live = service.experiments[eid]
        await wait_for(lambda: live.retrying, 10, "the decision left to the retry task")
        event_log = live.host.log
        before = event_log.seq
        for units in range(5):
            await worker.send(ProgressReported(**ids(eid, 1), units=units))
        await wait_for(lambda: event_log.durable_seq >= before + 5, 10, "the five inputs")
        assert live.host.outbox  # the close still waits
        assert (tmp_path / "state" / "experiments" / eid / "unsent.json").exists()
    await wait_for(lambda: len(worker.control) == 1, 10, "the close, once the broker is back")
    await wait_for(lambda: not live.retrying, 10, "the outbox drained")
    assert not (tmp_path / "state" / "experiments" / eid / "unsent.json").exists()


async def test_a_create_delivered_twice_without_a_key_makes_one_experiment(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """A create the broker delivers again (the searcher crashed between its log's fsync
    and its ack) has the same message id: it answers with the same experiment."""
    await searcher()
    directory = context(tmp_path, {"train.py": "pass\n"})
    request = CreateExperiment(
        config=SINGLE, context_b64=base64.b64encode(pack(directory)).decode()
    )
    replies = await broker.declare_private_queue()
    answers = await collect(broker, replies)
    envelope = Envelope(message_id="create-once", body=request)
    t = broker.topology
    for _ in range(2):
        await broker.publish(
            t.rpc_exchange,
            t.RPC_KEY,
            encode(envelope),
            message_id="create-once",
            reply_to=replies,
            correlation_id="create-once",
        )
    await wait_for(lambda: len(answers) == 2, 20, "both answers")
    ids = set()
    for answer in answers:
        reply = decode(answer.body).body
        assert isinstance(reply, RpcReply)
        assert reply.ok
        assert reply.result is not None
        ids.add(reply.result["experiment_id"])
    assert len(ids) == 1
    assert len(list((tmp_path / "state" / "experiments").iterdir())) == 1


async def test_an_event_under_an_id_of_the_searchers_own_inputs_is_refused(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """A forged ``lost/<trial>/<attempt>`` would make the searcher believe it had applied
    the loss of a trial already: such ids are the searcher's, and refused from workers."""
    service: SearcherService = await searcher()
    worker = FakeWorker(broker)
    await worker.start()
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    eid = created["experiment_id"]
    await wait_for(lambda: len(worker.work) == 1, 10, "the run_trial")
    dead = await collect(broker, broker.topology.dead_queue)
    await worker.send(ProgressReported(**ids(eid, 1), units=1), message_id="lost/1/1")
    await worker.send(ProgressReported(**ids(eid, 1), units=1), message_id=f"{eid}/control/x")
    await wait_for(lambda: len(dead) == 2, 10, "both refused")
    for delivery in dead:
        assert "the searcher gives its own inputs" in str(delivery.headers[DEAD_REASON_HEADER])
    assert "lost/1/1" not in service.experiments[eid].host.seen


async def test_an_experiment_that_cannot_be_rebuilt_mid_run_is_error_and_its_input_kept(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    """The search raised on an input, and the experiment's log could not be folded again
    in this process: the experiment is shown as ERROR, the input goes to the dead-letter
    queue with the reason (a restart that recovers it can take it back), and the
    searcher serves the others."""
    service: SearcherService = await searcher()
    worker, client, created = await two_trials_running(broker, tmp_path)
    eid = created["experiment_id"]
    live = service.experiments[eid]
    await wait_for(lambda: len(live.host.run.trials) == 2, 10, "two trials")
    live.host.context_root = tmp_path / "nowhere"  # its custom method cannot be found
    dead = await collect(broker, broker.topology.dead_queue)
    await worker.send(OpCompleted(**ids(eid, 1), length=4, metric=2.0))
    # Another input of it, right behind: it finds the experiment dropped (waiting for
    # its lock, or after), and is kept too.
    await worker.send(ProgressReported(**ids(eid, 2), units=1))
    await wait_for(lambda: len(dead) == 2, 10, "both inputs, dead-lettered")
    reasons = sorted(str(d.headers[DEAD_REASON_HEADER]) for d in dead)
    assert any("cannot be rebuilt from its log" in r for r in reasons), reasons
    summary = await client.describe(eid)
    assert summary.state == "ERROR"
    assert "could not be recovered" in summary.message
    assert "fragile" in summary.message
    other = await client.create_experiment(SINGLE, tmp_path / "context")
    await wait_for(
        lambda: any(w.experiment_id == other["experiment_id"] for w in worker.work),
        10,
        "the other experiment's trial",
    )


async def test_a_custom_method_that_exits_at_import_is_refused_and_the_searcher_lives(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path
) -> None:
    await searcher()
    client = SearcherClient(broker)
    files = {"train.py": "pass\n", "quits.py": "import sys\nsys.exit(0)\n"}
    config = {**FRAGILE_CONFIG, "searcher": {**FRAGILE_CONFIG["searcher"], "class": "quits:Q"}}  # type: ignore[dict-item]
    with pytest.raises(RefusedError, match="SystemExit"):
        await client.create_experiment(config, context(tmp_path, files))
    assert (await client.create_experiment(SINGLE, tmp_path / "context"))["experiment_id"]


async def test_a_takeover_reads_the_log_again_while_the_old_owner_still_appends(
    broker: Broker, searcher: Callable[[], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a shared state directory the searcher being taken over can append between the
    new one's read of the log and its owner record: the new one's append then finds a
    log it did not write (StaleOwnerError). It reads the log again and takes the
    experiment over; it used to show the experiment as ERROR (a CI run of
    tests/faults/test_shared_state_dir.py)."""
    await searcher()
    client = SearcherClient(broker)
    created = await client.create_experiment(SINGLE, context(tmp_path, {"train.py": "pass\n"}))
    eid = created["experiment_id"]
    real_open = ExperimentHost.open
    raced: list[Path] = []

    def open_after_a_race(path: Path, **kwargs: Any) -> ExperimentHost | None:
        if len(raced) < 2:  # twice, the old owner appends in the window
            raced.append(path)
            raise StaleOwnerError(f"{path} was written by another searcher (the test's)")
        return real_open(path, **kwargs)

    monkeypatch.setattr(ExperimentHost, "open", staticmethod(open_after_a_race))
    restarted: SearcherService = await searcher()
    assert raced == [Path(created["event_log"])] * 2
    assert eid in restarted.experiments
    assert eid not in restarted.broken
