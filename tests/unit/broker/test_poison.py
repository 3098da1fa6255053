"""The poison guard both brokers run their handlers through, with a delivery of its own."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from rung.broker.errors import BrokerError, BrokerUnavailableError, PublishTimeoutError
from rung.broker.port import DELIVERY_LIMIT, Delivery, Handler, PoisonGuard, body_id
from rung.broker.rpc import RpcTimeoutError
from rung.broker.topology import BROKER_DELIVERY_LIMIT, Topology

DEAD = "t.dead"


class FakeDelivery(Delivery):
    """Records how it was settled; ``dead_fails`` makes dead-lettering refuse."""

    def __init__(self, message_id: str | None = "m1", queue: str = "t.events") -> None:
        super().__init__(body=b"body", message_id=message_id, queue=queue)
        self.outcome: str | None = None
        self.dead_reason: str | None = None
        self.dead_fails = False
        self.lost = False

    def _settle(self, outcome: str) -> None:
        if self.settled:
            raise BrokerError("already settled")
        self.settled = True
        self.outcome = outcome

    async def ack(self) -> None:
        self._settle("ack")

    async def requeue(self) -> None:
        self._settle("requeue")

    async def _move_to_dead_queue(self, reason: str) -> None:
        if self.dead_fails:
            raise BrokerError("the dead exchange refused it")
        self.dead_reason = reason
        self._settle("dead")

    def link_lost(self) -> bool:
        return self.lost


def raising(exc: BaseException) -> Handler:
    async def handler(delivery: Delivery) -> None:
        raise exc

    return handler


async def ack(delivery: Delivery) -> None:
    await delivery.ack()


async def deliver(
    guard: PoisonGuard, handler: Handler, times: int, *, private: bool = False, **kw: object
) -> list[FakeDelivery]:
    """Deliver the same message ``times`` times (as the broker would, after requeues)."""
    out = []
    for _ in range(times):
        delivery = FakeDelivery(**kw)  # type: ignore[arg-type]
        await guard.run(handler, delivery, private=private)
        out.append(delivery)
    return out


def test_the_limits_are_documented_constants() -> None:
    assert DELIVERY_LIMIT == 5
    assert PoisonGuard(dead_queue=DEAD).limit == DELIVERY_LIMIT
    # The broker's count includes redeliveries after a dropped link: it sits well above.
    assert BROKER_DELIVERY_LIMIT > DELIVERY_LIMIT
    with pytest.raises(ValueError, match="at least 1"):
        PoisonGuard(dead_queue=DEAD, limit=0)


async def test_dead_lettered_at_the_limit_with_the_exception_in_the_reason() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=3)
    tries = await deliver(guard, raising(ValueError("bad length")), 3)
    assert [d.outcome for d in tries] == ["requeue", "requeue", "dead"]
    assert tries[-1].dead_reason == (
        "the handler raised 3 times (the delivery limit is 3); last: ValueError: bad length"
    )
    assert guard.failures(tries[-1]) == 0


async def test_success_clears_the_count() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=3)
    failed = await deliver(guard, raising(RuntimeError()), 2)
    assert guard.failures(failed[0]) == 2
    (handled,) = await deliver(guard, ack, 1)
    assert handled.outcome == "ack"
    assert guard.failures(handled) == 0
    # It starts from nothing again: two more failures do not reach the limit.
    again = await deliver(guard, raising(RuntimeError()), 2)
    assert [d.outcome for d in again] == ["requeue", "requeue"]


@pytest.mark.parametrize(
    "exc",
    [
        BrokerUnavailableError("the connection was lost"),
        PublishTimeoutError("no confirm"),
        RpcTimeoutError("no answer from the searcher"),
    ],
)
async def test_the_links_failures_are_not_counted(exc: Exception) -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    tries = await deliver(guard, raising(exc), 5)
    assert [d.outcome for d in tries] == ["requeue"] * 5
    assert guard.failures(tries[0]) == 0


async def test_a_failure_caused_by_the_link_is_not_counted() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)

    async def handler(delivery: Delivery) -> None:
        try:
            await raising(BrokerUnavailableError("gone"))(delivery)
        except BrokerUnavailableError as exc:
            raise RuntimeError("could not report") from exc

    tries = await deliver(guard, handler, 3)
    assert guard.failures(tries[0]) == 0


async def test_a_delivery_whose_link_is_gone_is_not_counted() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=1)
    delivery = FakeDelivery()
    delivery.lost = True
    await guard.run(raising(ValueError("x")), delivery)
    assert guard.failures(delivery) == 0
    assert delivery.outcome == "requeue"  # tried; the broker redelivers it anyway


async def test_extra_link_errors_are_not_counted() -> None:
    class LinkDownError(Exception):
        pass

    guard = PoisonGuard(dead_queue=DEAD, limit=1, link_errors=(LinkDownError,))
    (delivery,) = await deliver(guard, raising(LinkDownError()), 1)
    assert delivery.outcome == "requeue"


async def test_a_message_without_an_id_is_counted_by_its_body() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    tries = await deliver(guard, raising(ValueError("x")), 2, message_id=None)
    assert [d.outcome for d in tries] == ["requeue", "dead"]
    assert PoisonGuard.key(tries[0]) == ("t.events", body_id(b"body"))


async def test_counts_are_per_queue() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    await deliver(guard, raising(ValueError("x")), 1, queue="t.events")
    (other,) = await deliver(guard, raising(ValueError("x")), 1, queue="t.rpc")
    assert other.outcome == "requeue"


async def test_a_private_queue_drops_it_with_an_error() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    with capture_logs() as logs:
        tries = await deliver(guard, raising(KeyError("k")), 2, private=True)
    assert [d.outcome for d in tries] == ["requeue", "ack"]
    dropped = [e for e in logs if e["event"].startswith("poison message dropped")]
    assert len(dropped) == 1
    assert dropped[0]["log_level"] == "error"
    assert "KeyError: 'k'" in dropped[0]["reason"]


async def test_the_dead_queue_itself_never_gives_up() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    tries = await deliver(guard, raising(ValueError("x")), 4, queue=DEAD)
    assert [d.outcome for d in tries] == ["requeue"] * 4


async def test_a_dead_letter_refused_keeps_the_message_and_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("rung.broker.port.asyncio.sleep", no_sleep)
    guard = PoisonGuard(dead_queue=DEAD, limit=1)
    refused = FakeDelivery()
    refused.dead_fails = True
    await guard.run(raising(ValueError("x")), refused)
    assert refused.outcome == "requeue"  # kept, not lost
    # When it comes again, it is dead-lettered at once, without the handler.
    calls: list[int] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(1)

    again = FakeDelivery()
    await guard.run(handler, again)
    assert again.outcome == "dead"
    assert calls == []


async def test_a_handler_that_settles_then_raises_is_stopped_on_the_next_arrival() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=2)
    calls: list[int] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(1)
        await delivery.requeue()
        raise OSError("disk full")

    tries = await deliver(guard, handler, 3)
    assert [d.outcome for d in tries] == ["requeue", "requeue", "dead"]
    assert calls == [1, 1]
    assert "OSError: disk full" in (tries[2].dead_reason or "")


async def test_the_oldest_counts_are_forgotten_beyond_remember() -> None:
    guard = PoisonGuard(dead_queue=DEAD, limit=3, remember=2)
    for message_id in ("a", "b", "c"):
        await deliver(guard, raising(ValueError("x")), 1, message_id=message_id)
    assert guard.failures(FakeDelivery("a")) == 0  # forgotten: it only gets more tries
    assert guard.failures(FakeDelivery("b")) == 1
    assert guard.failures(FakeDelivery("c")) == 1


def test_only_the_dead_lettering_quorum_queues_get_the_brokers_limit() -> None:
    topology = Topology("t")
    limited = {
        q.name: q.declare_arguments()["x-delivery-limit"]
        for q in topology.queues
        if "x-delivery-limit" in q.declare_arguments()
    }
    assert limited == dict.fromkeys(
        (*topology.work_queues, topology.events_queue, topology.rpc_queue), BROKER_DELIVERY_LIMIT
    )
    # Never on the dead queue: rung dlq list takes and puts back every letter each time.
    assert (
        "x-delivery-limit"
        not in next(q for q in topology.queues if q.name == topology.dead_queue).declare_arguments()
    )
    # The deploy definitions keep it a policy, not a queue argument.
    assert all("x-delivery-limit" not in q.arguments() for q in topology.queues)
