"""Forged worker events, on RabbitMQ with real users: a second worker user speaks for a
trial it never received (a checkpoint for a queued trial, a start without the attempt's
start token) and under another worker's message ids. Each is ignored by the run (logged
with the reason) or dead-lettered, while the real trial, on the worker that took its
run_trial, completes. Class ``forged events`` in the hostile tally."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rung.broker.port import Delivery
from rung.broker.schemas import (
    CheckpointSaved,
    ExitReason,
    OpCompleted,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
    decode,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.client import SearcherClient
from rung.searcher.eventlog import read_log
from rung.searcher.eventlog.records import InputRecord
from tests.hostile.conftest import HostileTally
from tests.roles import (
    SINGLE,
    Roles,
    connected,
    context_dir,
    dead_letters,
    roles_vhost,
    searcher,
    send_event,
    wait_dead,
)
from tests.support import wait_for, wait_for_async

pytestmark = pytest.mark.rabbitmq
CLS = "forged events"
FORGED = "00000000-0000-4000-8000-0000000000f0"
REAL = "00000000-0000-4000-8000-0000000000a1"


@pytest.fixture(scope="module")
def roles() -> Iterator[Roles]:
    yield from roles_vhost()


async def test_forged_events_of_a_queued_trial_change_nothing_and_the_trial_completes(
    roles: Roles, tmp_path: Path, hostile: HostileTally
) -> None:
    state = tmp_path / "state"
    alice = roles.user("alice")
    async with (
        searcher(roles, state),
        connected(roles, alice) as as_alice,
        connected(roles, roles.w1) as as_w1,
        connected(roles, roles.w2) as as_w2,
        dead_letters(roles) as dead,
    ):
        client = SearcherClient(as_alice)
        created = await client.create_experiment(SINGLE, context_dir(tmp_path))
        experiment_id = created["experiment_id"]
        log_path = state / "experiments" / experiment_id / "events.jsonl"

        def ignored(message_id: str) -> str | None:
            for record in read_log(log_path):
                if isinstance(record, InputRecord) and record.message_id == message_id:
                    return record.ignored
            return None

        # w2 never received the run_trial; the trial is QUEUED. Its word is logged and
        # ignored: no checkpoint, no start.
        w2 = {"experiment_id": experiment_id, "trial_id": 1, "attempt": 1, "worker_id": roles.w2}
        forged_cases: list[tuple[str, Body, str]] = [
            (
                "checkpoint_saved for a queued trial",
                CheckpointSaved(**w2, uuid=FORGED, steps_completed=99, metadata={}, size_bytes=1),
                "QUEUED, not running",
            ),
            (
                "trial_started without the start token",
                TrialStarted(**w2, slots=1),
                "start token",
            ),
            (
                "trial_started with a made-up start token",
                TrialStarted(**w2, slots=1, start_token="0" * 32),
                "start token",
            ),
        ]
        for case, body, rule in forged_cases:
            started = time.monotonic()
            message_id = await send_event(as_w2, body, key_worker=roles.w2)
            await wait_for(lambda: ignored(message_id) is not None, 30, case)  # noqa: B023
            reason = ignored(message_id)
            assert reason is not None
            assert rule in reason, (case, reason)
            hostile.record(CLS, case, "contained", time.monotonic() - started)

        # w2 takes w1's message ids: dead-lettered, so w1's real events are not taken
        # for duplicates of it.
        started = time.monotonic()
        stolen = await send_event(
            as_w2,
            ProgressReported(**w2, units=1),
            key_worker=roles.w2,
            message_id=f"{roles.w1}/s1/1",
        )
        reason = await wait_dead(dead, stolen, "the event under w1's message id")
        assert "<worker id>/<session>/<n>" in reason, reason
        hostile.record(
            CLS,
            "event under another worker's message id",
            "dead-lettered",
            time.monotonic() - started,
        )

        # The real trial: w1 takes the run_trial and runs it to completion, its first
        # event under the id w2 tried to take.
        work: list[RunTrial] = []

        async def take(delivery: Delivery) -> None:
            body = decode(delivery.body).body
            if isinstance(body, RunTrial) and body.experiment_id == experiment_id:
                work.append(body)
            await delivery.ack()

        await as_w1.subscribe(roles.lp.topology.work_queue, take, prefetch=1)
        await wait_for(lambda: len(work) == 1, 30, "w1 takes the run_trial")
        run = work[0]
        assert run.start_token is not None
        w1 = {**w2, "worker_id": roles.w1}
        real: list[Body] = [
            TrialStarted(**w1, slots=1, start_token=run.start_token),
            CheckpointSaved(**w1, uuid=REAL, steps_completed=3, metadata={}, size_bytes=1),
            OpCompleted(**w1, length=run.length, metric=0.5),
            TrialExited(**w1, reason=ExitReason.COMPLETED, exit_code=0),
        ]
        for n, body in enumerate(real, start=1):
            await send_event(as_w1, body, key_worker=roles.w1, message_id=f"{roles.w1}/s1/{n}")

        async def completed() -> bool:
            return (await client.describe(experiment_id)).state == "COMPLETED"

        await wait_for_async(completed, 30, "the real trial completes")
        summary = await client.describe(experiment_id)
        assert [trial.state for trial in summary.trials] == ["COMPLETED"]
        assert summary.trials[0].latest_checkpoint == REAL
        # The real events were applied (its first not taken for a duplicate of w2's). Its
        # exit may come after the close found no control queue of w1's (a scripted
        # worker has none) and ended the attempt: then it is the one ignored.
        ignored_by_id = {
            r.message_id: r.ignored for r in read_log(log_path) if isinstance(r, InputRecord)
        }
        for n in (1, 2, 3):
            assert ignored_by_id[f"{roles.w1}/s1/{n}"] is None
