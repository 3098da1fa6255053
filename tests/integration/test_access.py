"""The trust model, enforced by the searcher on the real broker with real users: owners,
admins, workers' narrow interface, private reply queues, contexts, bound attempts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rung.broker import Delivery
from rung.broker.schemas import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    GetContext,
    ListExperiments,
    ListWorkers,
    ProgressReported,
    ReadRecords,
    ReadTrialLogs,
    RunTrial,
    TrialStarted,
    decode,
)
from rung.broker.schemas.envelope import Envelope, encode
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import InputRecord, read_log
from rung.searcher.service.access import ORIGINAL_USER_HEADER
from tests.roles import (
    SINGLE,
    Roles,
    call,
    connected,
    context_dir,
    dead_letters,
    heartbeat,
    publish_raw,
    refused,
    roles_vhost,
    searcher,
    send_event,
    wait_dead,
)
from tests.support import wait_for, wait_for_async

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def roles() -> Iterator[Roles]:
    """One vhost for the module: each rabbitmqctl call costs most of a second."""
    yield from roles_vhost()


async def test_a_client_reads_and_controls_only_its_own_experiments(
    roles: Roles, tmp_path: Path
) -> None:
    alice, bob, root = roles.user("alice"), roles.user("bob"), roles.user("root")
    async with (
        searcher(roles, tmp_path / "state"),
        connected(roles, alice) as as_alice,
        connected(roles, bob) as as_bob,
        connected(roles, root) as as_root,
    ):
        created = await SearcherClient(as_alice).create_experiment(SINGLE, context_dir(tmp_path))
        experiment_id = created["experiment_id"]
        await SearcherClient(as_bob).create_experiment(SINGLE, context_dir(tmp_path))

        # Bob: refused, with the rule named, for everything of alice's.
        for request in (
            ControlExperiment(experiment_id=experiment_id, action="kill"),
            ControlTrial(experiment_id=experiment_id, trial_id=1),
            DescribeExperiment(experiment_id=experiment_id),
            ReadRecords(experiment_id=experiment_id),
            ReadTrialLogs(experiment_id=experiment_id),
        ):
            message = refused(await call(as_bob, request))
            assert f"experiment {experiment_id} belongs to {alice}" in message
            assert "only its owner or an admin may" in message
        listed = await SearcherClient(as_bob).list_experiments()
        assert [s.owner for s in listed] == [bob]
        # Alice: her own, with her name as the owner.
        mine = await SearcherClient(as_alice).list_experiments()
        assert [(s.experiment_id, s.owner) for s in mine] == [(experiment_id, alice)]
        assert (await SearcherClient(as_alice).describe(experiment_id)).owner == alice
        # The admin: everything, and the kill goes through.
        everyone = await SearcherClient(as_root).list_experiments()
        assert {s.owner for s in everyone} == {alice, bob}
        killed = await SearcherClient(as_root).control(experiment_id, "kill")
        assert killed["experiment_id"] == experiment_id
        summary = await SearcherClient(as_alice).wait(experiment_id, poll_s=0.05, timeout=20)
        assert summary.state == "CANCELED"
    # The owner is in the log: the created record names alice.
    created_record = read_log(Path(created["event_log"]))[0]
    assert getattr(created_record, "owner", None) == alice


async def test_a_worker_may_not_create_or_control(roles: Roles, tmp_path: Path) -> None:
    pool = roles.lp.user("worker")  # known by its name: <prefix>worker
    async with (
        searcher(roles, tmp_path / "state") as service,
        connected(roles, roles.user("alice")) as as_alice,
        connected(roles, pool) as as_pool,
        connected(roles, roles.w1) as as_w1,
    ):
        created = await SearcherClient(as_alice).create_experiment(SINGLE, context_dir(tmp_path))
        experiment_id = created["experiment_id"]
        await heartbeat(as_w1, roles.w1)  # w1 is a dedicated worker user: heard as one
        await wait_for(lambda: service.access.role(roles.w1) == "worker", 30, "w1 heard")
        request = CreateExperiment(config=SINGLE, context_b64="")
        for worker in (as_pool, as_w1):
            assert "workers may not create experiments" in refused(await call(worker, request))
            for control in (
                ControlExperiment(experiment_id=experiment_id, action="pause"),
                ListExperiments(),
                ListWorkers(),
            ):
                assert "is a worker" in refused(await call(worker, control)), control.type
        # What a worker may read: the best validation metric of work queued or running.
        reply = await call(as_pool, DescribeExperiment(experiment_id=experiment_id))
        assert reply.result is not None
        assert set(reply.result) == {"experiment_id", "state", "best_trial"}
        summary = await SearcherClient(as_alice).describe(experiment_id)
        assert summary.state == "ACTIVE"


async def test_a_reply_queue_that_is_not_private_is_refused(roles: Roles, tmp_path: Path) -> None:
    t = roles.lp.topology
    request = Envelope(message_id="forged-1", body=ListExperiments())
    async with searcher(roles, tmp_path / "state"), dead_letters(roles) as dead:
        message_id = await publish_raw(
            roles.url(roles.user("alice")),
            t.rpc_exchange,
            t.RPC_KEY,
            encode(request),
            message_id="forged-reply-to",
            reply_to=t.work_queue,
            correlation_id="c-1",
        )
        reason = await wait_dead(dead, message_id, "the forged request dead-lettered")
    assert f"reply_to {t.work_queue!r} is not a private reply queue" in reason


async def test_get_context_refuses_traversal_and_other_users(roles: Roles, tmp_path: Path) -> None:
    t = roles.lp.topology
    valid = encode(Envelope(message_id="traversal", body=GetContext(context_hash="0" * 64)))
    forged = valid.replace(b"0" * 64, b"../../x")
    async with (
        searcher(roles, tmp_path / "state"),
        connected(roles, roles.user("alice")) as as_alice,
        connected(roles, roles.user("bob")) as as_bob,
        dead_letters(roles) as dead,
    ):
        message_id = await publish_raw(
            roles.url(roles.user("bob")),
            t.rpc_exchange,
            t.RPC_KEY,
            forged,
            message_id="traversal",
            reply_to=f"amq_{uuid.uuid4().hex}",
        )
        reason = await wait_dead(dead, message_id, "the traversal dead-lettered")
        assert "context_hash" in reason
        created = await SearcherClient(as_alice).create_experiment(SINGLE, context_dir(tmp_path))
        described = await SearcherClient(as_alice).describe(created["experiment_id"])
        digest = read_log(Path(described.event_log))[0].model_dump()["context_hash"]
        assert (await call(as_alice, GetContext(context_hash=digest))).ok
        message = refused(await call(as_bob, GetContext(context_hash=digest)))
        assert "may not fetch context" in message


async def _started_on_w1(
    roles: Roles, tmp_path: Path, state: Path
) -> tuple[str, RunTrial, dict[str, object]]:
    """An experiment of alice's whose one trial w1 took and started."""
    async with (
        searcher(roles, state, verify_worker_users=False),
        connected(roles, roles.user("alice")) as as_alice,
        connected(roles, roles.w1) as as_w1,
    ):
        created = await SearcherClient(as_alice).create_experiment(SINGLE, context_dir(tmp_path))
        work: list[RunTrial] = []

        async def take(delivery: Delivery) -> None:
            body = decode(delivery.body).body
            # Work left in the module's queue by earlier tests is dropped.
            if isinstance(body, RunTrial) and body.experiment_id == created["experiment_id"]:
                work.append(body)
            await delivery.ack()

        await as_w1.subscribe(roles.lp.topology.work_queue, take, prefetch=1)
        await wait_for(lambda: len(work) == 1, 30, "w1 takes the run_trial")
        run = work[0]
        ids: dict[str, object] = {
            "experiment_id": run.experiment_id,
            "trial_id": run.trial_id,
            "attempt": run.attempt,
            "worker_id": roles.w1,
        }
        started = TrialStarted(**ids, slots=1, start_token=run.start_token)
        await send_event(as_w1, started, key_worker=roles.w1)
        summary_of = SearcherClient(as_alice)

        async def running() -> bool:
            summary = await summary_of.describe(created["experiment_id"])
            return summary.trials[0].state == "RUNNING"

        await wait_for_async(running, 30, "the trial running on w1")
    return created["experiment_id"], run, ids


async def test_an_event_for_an_attempt_another_worker_started_is_dead_lettered(
    roles: Roles, tmp_path: Path
) -> None:
    """Even with --no-verify-worker-users, and across a restart of the searcher: the
    attempt is bound to (w1's user, w1's id), and w2 cannot speak for it."""
    state = tmp_path / "state"
    experiment_id, _run, ids = await _started_on_w1(roles, tmp_path, state)
    # The binding is in the log: trial_started's record names its sender.
    records = read_log(state / "experiments" / experiment_id / "events.jsonl")
    started = [
        r for r in records if isinstance(r, InputRecord) and isinstance(r.input, TrialStarted)
    ]
    assert [r.sender for r in started] == [roles.w1]
    async with (
        searcher(roles, state, verify_worker_users=False),  # restarted
        connected(roles, roles.w1) as as_w1,
        connected(roles, roles.w2) as as_w2,
        dead_letters(roles) as dead,
    ):
        lie = await send_event(
            as_w2,
            ProgressReported(**ids, units=1),
            key_worker=roles.w2,
        )
        reason = await wait_dead(dead, lie, "w2's forged event dead-lettered")
        assert f"was started by worker {roles.w1!r} (broker user {roles.w1!r})" in reason
        assert f"broker user {roles.w2!r}" in reason
        truth = await send_event(
            as_w1,
            ProgressReported(**ids, units=2),
            key_worker=roles.w1,
        )
        records_path = state / "experiments" / experiment_id / "events.jsonl"
        await wait_for(
            lambda: any(
                isinstance(r, InputRecord) and r.message_id == truth for r in read_log(records_path)
            ),
            30,
            "w1's own event applied",
        )
        assert truth not in dead


async def test_a_requeued_event_needs_an_operator_and_counts_as_its_original_sender(
    roles: Roles, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    experiment_id, _run, ids = await _started_on_w1(roles, tmp_path, state)
    t = roles.lp.topology
    operator = roles.lp.user("operator")  # <prefix>operator: known by its name

    async def resend(user: str, original: str, message_id: str, key: str) -> str:
        envelope = Envelope(message_id=message_id, body=ProgressReported(**ids, units=1))
        return await publish_raw(
            roles.url(user),
            t.events_exchange,
            key,
            encode(envelope),
            message_id=message_id,
            headers={ORIGINAL_USER_HEADER: original},
        )

    async with searcher(roles, state), dead_letters(roles) as dead:
        # A worker cannot claim to re-send another's event.
        forged = await resend(roles.w2, roles.w1, "w2/requeue/1", t.events_key(roles.w2))
        reason = await wait_dead(dead, forged, "the worker's re-send dead-lettered")
        assert "only an operator may re-send dead letters" in reason
        # The operator's re-send of w2's event is still w2's: not w1's attempt.
        lie = await resend(operator, roles.w2, "w2/requeue/2", t.EVENTS_KEY)
        reason = await wait_dead(dead, lie, "the re-sent lie dead-lettered")
        assert f"broker user {roles.w2!r}" in reason
        # The operator's re-send of w1's own event is w1's: applied, logged as w1's.
        truth = await resend(operator, roles.w1, f"{roles.w1}/requeue/3", t.EVENTS_KEY)
        records_path = state / "experiments" / experiment_id / "events.jsonl"

        def applied() -> list[InputRecord]:
            return [
                r
                for r in read_log(records_path)
                if isinstance(r, InputRecord) and r.message_id == truth
            ]

        await wait_for(lambda: bool(applied()), 30, "w1's re-sent event applied")
        assert applied()[0].sender == roles.w1
        assert truth not in dead
