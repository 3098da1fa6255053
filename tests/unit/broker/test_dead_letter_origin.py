"""What a dead letter's origin is taken to be (broker.deadletters), and who may write the
dead exchange (broker.definitions): no broker needed."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rung.broker.deadletters import DeadLetter, searcher_user_for
from rung.broker.definitions import ROLES, definitions
from rung.broker.port import (
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    DEAD_SENDER_HEADER,
    ORIGINAL_USER_HEADER,
    Delivery,
)
from rung.broker.topology import Topology

SEARCHER = "rung-searcher"
WORKER = "rung-worker"


class _Letter(Delivery):
    async def ack(self) -> None: ...

    async def requeue(self) -> None: ...

    async def _move_to_dead_queue(self, reason: str) -> None: ...


def _letter(user_id: str | None, headers: dict[str, Any]) -> DeadLetter:
    delivery = _Letter(body=b"{}", message_id="m", headers=headers, user_id=user_id)
    return DeadLetter.of(delivery, searcher_user=SEARCHER, operator_user="rung-operator")


def test_the_searchers_headers_are_believed_on_its_own_dead_letters() -> None:
    headers = {
        DEAD_QUEUE_HEADER: "rung.events",
        DEAD_REASON_HEADER: "refused",
        DEAD_SENDER_HEADER: WORKER,
    }
    letter = _letter(SEARCHER, headers)
    assert (letter.moved_by, letter.queue, letter.reason, letter.sender) == (
        "searcher",
        "rung.events",
        "refused",
        WORKER,
    )


def test_the_brokers_first_death_entry_is_believed_not_x_first_death() -> None:
    headers = {
        "x-death": [
            {"queue": "rung.work", "reason": "rejected", "count": 1},
            {"queue": "rung.events", "reason": "expired", "count": 1},
        ],
        "x-first-death-queue": "rung.events",
        DEAD_QUEUE_HEADER: "rung.rpc",
        DEAD_SENDER_HEADER: SEARCHER,
    }
    letter = _letter(SEARCHER, {k: v for k, v in headers.items() if k != DEAD_QUEUE_HEADER})
    assert (letter.moved_by, letter.queue, letter.sender) == ("broker", "rung.work", SEARCHER)
    assert letter.reason.startswith("rejected (dead-lettered by the broker)")
    # Rung's headers on someone else's message are claims: the broker's entry wins.
    letter = _letter(WORKER, headers)
    assert (letter.moved_by, letter.queue, letter.sender) == ("broker", "rung.work", WORKER)


def test_a_letter_neither_moved_is_unknown() -> None:
    letter = _letter("admin", {DEAD_QUEUE_HEADER: "rung.work", DEAD_SENDER_HEADER: SEARCHER})
    assert (letter.moved_by, letter.sender) == ("unknown", "admin")
    assert _letter(None, {}).sender == ""


def test_an_operators_own_requeue_names_the_original_sender() -> None:
    death = [{"queue": "rung.work", "reason": "rejected"}]
    letter = _letter("rung-operator", {"x-death": death, ORIGINAL_USER_HEADER: SEARCHER})
    assert letter.sender == SEARCHER
    # Anyone else's claim of an original sender is not.
    letter = _letter(WORKER, {"x-death": death, ORIGINAL_USER_HEADER: SEARCHER})
    assert letter.sender == WORKER


_TEXT = st.text(max_size=20)
_VALUE = st.one_of(_TEXT, st.binary(max_size=20), st.integers(), st.none())
_DEATH = st.lists(
    st.dictionaries(st.sampled_from(["queue", "reason", "count"]), _VALUE), max_size=3
)
_HEADERS = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                DEAD_QUEUE_HEADER,
                DEAD_REASON_HEADER,
                DEAD_SENDER_HEADER,
                ORIGINAL_USER_HEADER,
                "x-first-death-queue",
                "x-first-death-reason",
            ]
        ),
        _TEXT,
    ),
    _VALUE,
    max_size=8,
).flatmap(lambda h: st.builds(lambda d: {**h, "x-death": d} if d else h, _DEATH))


@given(headers=_HEADERS)
def test_whatever_a_worker_writes_its_letters_sender_is_the_worker(headers: dict[str, Any]) -> None:
    letter = _letter(WORKER, headers)
    assert letter.sender == WORKER
    assert letter.moved_by != "searcher"


def test_the_searcher_user_beside_an_operator() -> None:
    assert searcher_user_for("acme-operator") == "acme-searcher"
    assert searcher_user_for("rung-operator") == SEARCHER
    assert searcher_user_for("admin") == SEARCHER
    assert searcher_user_for(None) == SEARCHER


def test_only_the_searcher_may_write_the_dead_exchange() -> None:
    topology = Topology("rung")
    document = definitions(topology, workers=["gpu-1"])
    writers = {
        p["user"] for p in document["permissions"] if re.match(p["write"], topology.dead_exchange)
    }
    assert writers == {SEARCHER}
    assert "operator" in ROLES


def test_workers_read_every_work_queue_and_the_operator_the_dead_queue() -> None:
    topology = Topology("rung")
    document = definitions(topology)
    permissions = {p["user"]: p for p in document["permissions"]}
    for queue in topology.work_queues:
        assert re.match(permissions[WORKER]["read"], queue), queue
    operator = permissions["rung-operator"]
    assert re.match(operator["read"], topology.dead_queue)
    for queue in (*topology.work_queues, topology.events_queue, topology.rpc_queue):
        assert not re.match(operator["read"], queue), queue
    topics = {
        t["exchange"]: t["write"]
        for t in document["topic_permissions"]
        if t["user"] == "rung-operator"
    }
    # A dead command goes back through the searcher: the operator writes no command.
    assert topology.commands_exchange not in topics
    assert not re.match(operator["write"], topology.commands_exchange)
    assert re.match(topics[topology.events_exchange], topology.EVENTS_KEY)
    assert not re.match(topics[topology.events_exchange], topology.events_key("gpu-1"))
    assert not re.match(topics[topology.events_exchange], topology.heartbeat_key("gpu-1"))
