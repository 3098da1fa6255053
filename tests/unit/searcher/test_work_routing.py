"""The outbox routes each run_trial to the work bucket of its size (no head-of-line
blocking: only workers that can fit a trial ever see it)."""

from __future__ import annotations

from typing import Any

import pytest

from rung.broker import Topology
from rung.broker.schemas import Envelope, KillTrial
from rung.searcher.service.outbox import Outbox
from rung.searcher.trials import Command
from tests.unit.worker.test_agent_buckets import run_trial


class RecordingBroker:
    def __init__(self) -> None:
        self.topology = Topology("routing")
        self.sent: list[tuple[str, str]] = []

    async def publish(self, exchange: str, key: str, body: bytes, **kw: Any) -> None:
        self.sent.append((exchange, key))


def outbox(broker: RecordingBroker) -> Outbox:
    def never(*args: Any) -> Any:
        raise AssertionError("not expected here")

    return Outbox(broker, spawn=never, fatal=never, drop=never)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("slots", "key"),
    [(0, "work"), (1, "work"), (2, "work.2"), (3, "work.3"), (12, "work.16"), (64, "work.64")],
)
async def test_a_run_trial_goes_to_the_bucket_of_its_size(slots: int, key: str) -> None:
    broker = RecordingBroker()
    body = run_trial(1, slots)
    await outbox(broker)._send(Command(body), Envelope(message_id="m", body=body))
    assert broker.sent == [(broker.topology.commands_exchange, key)]
    bound = {b.routing_key: b.queue for b in broker.topology.bindings}
    assert bound[key] in broker.topology.work_queues


async def test_a_command_for_one_worker_goes_to_its_control_queue() -> None:
    broker = RecordingBroker()
    body = KillTrial(experiment_id="e1", trial_id=1, attempt=1)
    await outbox(broker)._send(Command(body, "w1"), Envelope(message_id="m", body=body))
    assert broker.sent == [(broker.topology.commands_exchange, "worker.w1")]
