"""One suite, two brokers: the in-memory broker must behave like RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from rung.broker import (
    DEAD_REASON_HEADER,
    Broker,
    BrokerError,
    Delivery,
    RabbitBroker,
    UnroutableError,
)
from rung.broker.port import DELIVERY_LIMIT
from tests.support import wait_for


async def collect(broker: Broker, queue: str, prefetch: int = 10) -> list[Delivery]:
    got: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()

    await broker.subscribe(queue, handler, prefetch=prefetch)
    return got


async def test_publish_then_consume_round_trip(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(
        t.events_exchange, t.EVENTS_KEY, b'{"a": 1}', message_id="m1", headers={"h": "v"}
    )
    got = await collect(broker, t.events_queue)
    await wait_for(lambda: len(got) == 1, 10, "the message")
    assert got[0].body == b'{"a": 1}'
    assert got[0].message_id == "m1"
    assert got[0].headers["h"] == "v"
    assert not got[0].redelivered


async def test_unroutable_mandatory_publish_raises(broker: Broker) -> None:
    t = broker.topology
    with pytest.raises(UnroutableError):
        await broker.publish(t.commands_exchange, t.worker_key("nobody"), b"{}", message_id="m")


async def test_prefetch_bounds_handlers_in_flight(broker: Broker) -> None:
    t = broker.topology
    for i in range(6):
        await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id=f"m{i}")
    held: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)

    await broker.subscribe(t.work_queue, hold, prefetch=2)
    await wait_for(lambda: len(held) == 2, 10, "two deliveries")
    await asyncio.sleep(0.3)  # give the broker a chance to over-deliver; it must not
    assert len(held) == 2
    await held[0].ack()
    await wait_for(lambda: len(held) == 3, 10, "a third delivery after an ack")
    for delivery in held[1:]:
        await delivery.ack()


async def test_requeue_redelivers_with_the_flag(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id="again")
    seen: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            await delivery.requeue()
        else:
            await delivery.ack()

    await broker.subscribe(t.work_queue, handler, prefetch=1)
    await wait_for(lambda: len(seen) == 2, 10, "the redelivery")
    assert seen[1].message_id == "again"
    assert seen[1].redelivered


async def test_dead_letter_keeps_the_reason(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(t.events_exchange, t.EVENTS_KEY, b"not json", message_id="bad")

    async def reject(delivery: Delivery) -> None:
        await delivery.dead_letter("not valid JSON")

    await broker.subscribe(t.events_queue, reject, prefetch=1)
    dead = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(dead) == 1, 10, "the dead letter")
    assert dead[0].body == b"not json"
    assert dead[0].headers[DEAD_REASON_HEADER] == "not valid JSON"
    assert dead[0].headers["x-rung-dead-queue"] == t.events_queue


async def test_private_queue_routing_and_removal(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    t = broker.topology
    name = await broker.declare_private_queue((t.commands_exchange, t.worker_key("w1")))
    got = await collect(broker, name)
    await broker.publish(t.commands_exchange, t.worker_key("w1"), b"x", message_id="c1")
    await wait_for(lambda: len(got) == 1, 10, "the control message")
    await broker.delete_private_queue(name)
    with pytest.raises(UnroutableError):
        await broker.publish(t.commands_exchange, t.worker_key("w1"), b"x", message_id="c2")
    # Its consumer was cancelled first: the broker had none to cancel (which the client
    # library would log as a warning at every worker's shutdown).
    assert not [r for r in caplog.records if "cancelled by the broker" in r.getMessage()]


async def test_a_private_queue_bound_to_no_exchange_is_a_broker_error(broker: Broker) -> None:
    """Issue 18 (a review): ``wait()`` falls back to polling when the live feed cannot
    be bound; the client library's own channel error must not escape as something else,
    and the connection stays usable."""
    t = broker.topology
    with pytest.raises(BrokerError, match="no-such-exchange"):
        await broker.declare_private_queue((f"{t.prefix}.no-such-exchange", "k"))
    name = await broker.declare_private_queue((t.commands_exchange, t.worker_key("w2")))
    got = await collect(broker, name)
    await broker.publish(t.commands_exchange, t.worker_key("w2"), b"x", message_id="c3")
    await wait_for(lambda: len(got) == 1, 10, "the control message")
    await broker.delete_private_queue(name)


async def test_reply_to_a_private_queue_through_the_default_exchange(broker: Broker) -> None:
    name = await broker.declare_private_queue()
    got = await collect(broker, name)
    await broker.publish("", name, b"reply", message_id="r1", correlation_id="c-1")
    await wait_for(lambda: len(got) == 1, 10, "the reply")
    assert got[0].correlation_id == "c-1"


async def test_messages_wait_for_a_consumer(broker: Broker) -> None:
    t = broker.topology
    for i in range(3):
        await broker.publish(t.rpc_exchange, t.RPC_KEY, str(i).encode(), message_id=f"q{i}")
    got = await collect(broker, t.rpc_queue)
    await wait_for(lambda: len(got) == 3, 10, "three queued messages")
    assert sorted(d.body for d in got) == [b"0", b"1", b"2"]


# ---------------------------------------------------------------- poison messages
# Every consumer on either broker: a message whose handler keeps raising is dead-lettered
# after DELIVERY_LIMIT tries, with the exception in the reason (docs/faults.md).


def _route(broker: Broker, kind: str) -> tuple[str, str, str]:
    """(exchange, routing key, queue) of one of the topology's consumed queues."""
    t = broker.topology
    return {
        "work": (t.commands_exchange, t.WORK_KEY, t.work_queue),
        "events": (t.events_exchange, t.events_key("w1"), t.events_queue),
        "heartbeats": (t.events_exchange, t.heartbeat_key("w1"), t.heartbeats_queue),
        "rpc": (t.rpc_exchange, t.RPC_KEY, t.rpc_queue),
    }[kind]


async def nothing_dead(broker: Broker) -> None:
    """Nothing was dead-lettered before now: a marker sent to the dead exchange is the
    first message there (the dead queue is first in, first out)."""
    t = broker.topology
    await broker.publish(t.dead_exchange, "", b"marker", message_id="marker")
    dead = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(dead) >= 1, 10, "the marker in the dead queue")
    assert [d.message_id for d in dead] == ["marker"]


@pytest.mark.parametrize("kind", ["work", "events", "heartbeats", "rpc"])
async def test_a_handler_that_always_raises_has_its_message_dead_lettered(
    broker: Broker, kind: str
) -> None:
    t = broker.topology
    exchange, key, queue = _route(broker, kind)
    await broker.publish(exchange, key, b"poison", message_id="poison")
    await broker.publish(exchange, key, b"fine", message_id="fine-1")
    tries: list[bool] = []
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.body == b"poison":
            tries.append(delivery.redelivered)
            raise ValueError("cannot digest this")
        handled.append(delivery.message_id or "")
        await delivery.ack()

    # Prefetch 1: the poison message cannot hide behind the others' slots.
    await broker.subscribe(queue, handler, prefetch=1)
    dead = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(dead) == 1, 20, "the poison message in the dead queue")
    assert dead[0].message_id == "poison"
    assert dead[0].body == b"poison"
    if isinstance(broker, RabbitBroker) and queue in t.work_queues:
        # A work queue's letter is rejected and moved by RabbitMQ's dead-lettering (no
        # worker may write the dead exchange): x-death says where, the log says why.
        death = dead[0].headers["x-death"][0]
        assert (death["queue"], death["reason"]) == (queue, "rejected")
        assert DEAD_REASON_HEADER not in dead[0].headers
    else:
        reason = dead[0].headers[DEAD_REASON_HEADER]
        assert f"raised {DELIVERY_LIMIT} times" in reason
        assert "ValueError: cannot digest this" in reason
        assert dead[0].headers["x-rung-dead-queue"] == queue
    assert len(tries) == DELIVERY_LIMIT  # tried exactly that often, then never again
    assert tries[0] is False
    assert all(tries[1:])
    # The consumer carries on with the others, those sent before and after.
    await broker.publish(exchange, key, b"fine", message_id="fine-2")
    await wait_for(lambda: sorted(handled) == ["fine-1", "fine-2"], 10, "the other messages")
    assert len(tries) == DELIVERY_LIMIT
    assert broker.guard.failures(dead[0]) == 0  # given up on: its count is gone


async def test_a_handler_that_fails_twice_then_succeeds_acks_normally(broker: Broker) -> None:
    t = broker.topology
    await broker.publish(t.events_exchange, t.events_key("w1"), b"flaky", message_id="flaky")
    tries: list[Delivery] = []
    counted: list[int] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(delivery)
        counted.append(broker.guard.failures(delivery))
        if len(tries) <= 2:
            raise RuntimeError(f"not yet ({len(tries)})")
        await delivery.ack()

    await broker.subscribe(t.events_queue, handler, prefetch=1)
    await wait_for(lambda: len(tries) == 3 and tries[2].settled, 10, "the third try's ack")
    assert counted == [0, 1, 2]  # each failure counted against the message
    assert broker.guard.failures(tries[2]) == 0  # and forgotten once it was handled
    await nothing_dead(broker)
    assert len(tries) == 3


async def test_a_handler_that_requeues_then_raises_is_stopped_too(broker: Broker) -> None:
    """A handler that settles its message itself and then raises (a worker whose trial
    would not start puts run_trial back, then fails): the limit holds all the same, and
    the message is dead-lettered when it comes back once more."""
    t = broker.topology
    await broker.publish(t.commands_exchange, t.WORK_KEY, b"cursed", message_id="cursed")
    tries: list[int] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(1)
        await delivery.requeue()
        raise OSError("no space left on device")

    await broker.subscribe(t.work_queue, handler, prefetch=1)
    dead = await collect(broker, t.dead_queue)
    await wait_for(lambda: len(dead) == 1, 20, "the message in the dead queue")
    if isinstance(broker, RabbitBroker):
        assert dead[0].headers["x-death"][0]["reason"] == "rejected"
    else:
        assert "OSError: no space left on device" in dead[0].headers[DEAD_REASON_HEADER]
    assert len(tries) == DELIVERY_LIMIT


async def test_a_private_queue_drops_a_poison_message_and_carries_on(broker: Broker) -> None:
    """A private queue has no dead-letter route: after the limit the message is dropped,
    with an error in the log, and its consumer goes on with the next one."""
    t = broker.topology
    name = await broker.declare_private_queue((t.commands_exchange, t.worker_key("w1")))
    tries: list[int] = []
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.body == b"poison":
            tries.append(1)
            raise KeyError("trial 7")
        handled.append(delivery.message_id or "")
        await delivery.ack()

    await broker.subscribe(name, handler, prefetch=1)
    with capture_logs() as logs:
        await broker.publish(t.commands_exchange, t.worker_key("w1"), b"poison", message_id="c1")
        await broker.publish(t.commands_exchange, t.worker_key("w1"), b"fine", message_id="c2")
        # Prefetch 1: c2 is delivered only once the poison message was settled for good.
        await wait_for(lambda: handled == ["c2"], 20, "the next message")
    assert len(tries) == DELIVERY_LIMIT
    dropped = [e for e in logs if e["event"].startswith("poison message dropped")]
    assert len(dropped) == 1
    assert dropped[0]["log_level"] == "error"
    assert dropped[0]["message_id"] == "c1"
    assert "KeyError: 'trial 7'" in dropped[0]["reason"]
    await nothing_dead(broker)
    assert len(tries) == DELIVERY_LIMIT


async def test_a_consumer_of_higher_priority_with_room_gets_the_messages_first(
    broker: Broker,
) -> None:
    """Consumer priorities (RabbitMQ's ``x-priority``): a worker whose slot is only about
    to free consumes at priority 0, so that a worker with a slot free now is served first;
    the lower one gets a message only while every higher one is full."""
    t = broker.topology
    high: list[Delivery] = []
    low: list[Delivery] = []

    async def on_high(delivery: Delivery) -> None:
        high.append(delivery)  # held: its room is 3

    async def on_low(delivery: Delivery) -> None:
        low.append(delivery)

    await broker.subscribe(t.work_queue, on_low, prefetch=3, priority=0)
    await broker.subscribe(t.work_queue, on_high, prefetch=3, priority=1)
    for i in range(3):  # (round robin would give the low one some of them)
        await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id=f"p{i}")
        await wait_for(lambda n=i + 1: len(high) + len(low) == n, 10, f"delivery {i}")  # type: ignore[misc]
    assert (len(high), len(low)) == (3, 0)
    await broker.publish(t.commands_exchange, t.WORK_KEY, b"{}", message_id="p3")
    await wait_for(lambda: len(low) == 1, 10, "the fourth message, to the lower consumer")
    assert len(high) == 3
    for delivery in (*high, *low):
        await delivery.ack()
