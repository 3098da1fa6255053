"""RabbitMQ definitions from the topology, and the in-memory broker's topic matching."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from rung.broker.definitions import definitions, password_hash
from rung.broker.memory import topic_matches
from rung.broker.topology import BROKER_DELIVERY_LIMIT, Topology


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("events.#", "events", True),  # '#' matches no word too, as in RabbitMQ
        ("events.#", "events.w1", True),
        ("events.#", "events.pool.host-1", True),
        ("events.#", "heartbeat.w1", False),
        ("worker.w1", "worker.w1", True),
        ("worker.w1", "worker.w12", False),
        ("*.w1", "worker.w1", True),
        ("*.w1", "w1", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y", False),
    ],
)
def test_topic_matching_is_rabbitmqs(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_passwords_are_hashed_as_rabbitmq_checks_them() -> None:
    salt = b"\x01\x02\x03\x04"
    stored = base64.b64decode(password_hash("s3cret", salt))
    assert stored[:4] == salt
    assert stored[4:] == hashlib.sha256(salt + b"s3cret").digest()
    assert password_hash("s3cret") != password_hash("s3cret")  # a fresh salt each time


def test_definitions_mirror_the_topology() -> None:
    topology = Topology("rung")
    document = definitions(topology, vhost="v", workers=["gpu-1"])
    assert {x["name"]: x["type"] for x in document["exchanges"]} == {
        x.name: x.kind for x in topology.exchanges
    }
    assert {q["name"]: q["arguments"] for q in document["queues"]} == {
        q.name: q.arguments() for q in topology.queues
    }
    assert {(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]} == {
        (b.exchange, b.queue, b.routing_key) for b in topology.bindings
    }
    users = {u["name"]: u for u in document["users"]}
    assert set(users) == {
        "rung-searcher",
        "rung-worker",
        "gpu-1",
        "rung-client",
        "rung-operator",
        "rung-monitor",
    }
    assert all(u["password_hash"] == "" for u in users.values())  # set them after import
    assert users["rung-monitor"]["tags"] == ["monitoring"]


def test_a_worker_may_write_events_and_never_commands() -> None:
    topology = Topology("rung")
    document = definitions(topology, vhost="v")
    worker = next(p for p in document["permissions"] if p["user"] == "rung-worker")
    writable = re.compile(worker["write"])
    assert writable.match(topology.events_exchange)
    assert not writable.match(topology.commands_exchange)
    assert not writable.match("amq.default")  # the default exchange reaches any queue
    assert not re.compile(worker["configure"]).match(topology.work_queue)
    topics = {t["exchange"]: t for t in document["topic_permissions"] if t["user"] == "rung-worker"}
    own = topics[topology.events_exchange]["write"].replace("{username}", "rung-worker")
    assert re.match(own, topology.events_key("rung-worker.host-1-ab12"))
    assert not re.match(own, topology.events_key("other-worker"))
    binds = topics[topology.commands_exchange]["read"].replace("{username}", "rung-worker")
    assert re.match(binds, topology.WORK_KEY)
    assert re.match(binds, topology.worker_key("rung-worker.host-1-ab12"))
    assert not re.match(binds, topology.worker_key("gpu-2"))


def test_the_delivery_limit_policy_is_the_one_a_declared_topology_gets() -> None:
    topology = Topology("rung")
    (policy,) = definitions(topology, vhost="v")["policies"]
    assert policy["definition"] == {"delivery-limit": BROKER_DELIVERY_LIMIT}
    pattern = re.compile(policy["pattern"])
    assert {q.name for q in topology.queues if pattern.match(q.name)} == {
        q.name for q in topology.queues if "x-delivery-limit" in q.declare_arguments()
    }


def test_no_role_but_the_searcher_may_write_commands() -> None:
    """The operator sends dead commands back through the searcher (ResendCommand): it may
    not write the commands exchange, with any routing key."""
    topology = Topology("rung")
    document = definitions(topology, vhost="v", workers=("gpu-1",))
    for permission in document["permissions"]:
        may = re.compile(permission["write"]).match(topology.commands_exchange)
        assert bool(may) == (permission["user"] == "rung-searcher"), permission["user"]
    assert not [
        t
        for t in document["topic_permissions"]
        if t["exchange"] == topology.commands_exchange and t["write"] != "^$"
    ]
