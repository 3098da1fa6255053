"""RabbitMQ definitions made from the topology: vhost, exchanges, queues, bindings,
policies, and one least-privilege user per role.

``rung broker-definitions`` prints them; ``deploy/rabbitmq/definitions.json`` is its
output (a test keeps the two equal), so the broker's configuration cannot drift from
``broker/topology.py``. Permissions follow ``shared/reference/rabbitmq.md`` §4:

* **searcher**: publishes commands, the live feed, dead letters (with their reason) and
  RPC replies (through the default exchange, to each caller's reply queue); consumes
  events, heartbeats and requests. It declares nothing. It is the one role that may
  write the dead exchange: a dead letter it moves carries its reason and its sender,
  which ``rung dlq`` trusts because the broker validated the searcher's ``user_id`` on it.
* **workers**: consume the work queues (every bucket); declare and bind their own
  server-named queues (control commands, RPC replies); publish events and RPC requests.
  They may not write the dead exchange: a worker dead-letters a run_trial by rejecting
  it, and the work queue's dead-letter exchange moves it (RabbitMQ's ``x-death`` says
  where it died; the original ``user_id`` stays). Topic permissions confine a worker user
  to its own routing keys: it binds only the work keys and ``worker.<user>[.<suffix>]``
  and publishes only ``events.<user>[.<suffix>]`` and ``heartbeat.<user>[.<suffix>]``.
  With no write on the commands exchange or the default exchange, it cannot publish an
  operation; exclusive queues keep it out of other workers' control queues; and the
  broker checks the ``user_id`` it stamps on every message, which the searcher matches
  against the event's worker id (``rung searcher --verify-worker-users``).
* **clients**: send requests to the searcher and read the live feeds, through queues of
  their own.
* **operator**: what a client may, and the dead queue: read (list, take) and purge it,
  and send a dead letter back: on the events exchange with the key ``events`` only
  (never a heartbeat, never a worker's own key), and on the rpc exchange. It may not
  write the commands exchange at all: a dead command goes back through the searcher
  (``ResendCommand``), which publishes again what its log holds under that message id.
  ``rung dlq requeue`` decides what may go back (``broker.deadletters``): a command only
  if the searcher sent it (and resends it), an event or request only with its original
  sender named in ``x-rung-original-user``, which the searcher then checks it against.
  Workers run commands only from the searcher's user (they check the ``user_id``).
* **monitor**: the management API's ``monitoring`` tag and no AMQP rights at all (KEDA
  reads the work queue's depth with it).

Users get no password: set one with ``rabbitmqctl change_password`` (or pass
``--password ROLE=...`` to put a salted hash in the output, for tests and one-off
set-ups). A worker user may be a pool (``rung-worker``, whose workers take ids
``rung-worker.<host>-<pid>-<n>``) or one per machine (``--worker NAME``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rung.broker.topology import BROKER_DELIVERY_LIMIT, Topology

__all__ = ["ROLES", "definitions", "password_hash"]

ROLES = ("searcher", "worker", "client", "operator", "monitor")
# Queues private to one connection (exclusive): named by aio-pika's robust channels
# (amq_<uuid>), or by the broker (amq.gen-...).
_PRIVATE = r"amq_[0-9a-f]{32}|amq\.gen-.*"
# A message that made its consumer crash this often is dead-lettered: the same limit as a
# topology Rung declares itself gives its queues (x-delivery-limit), here as a policy.
_DELIVERY_LIMIT = BROKER_DELIVERY_LIMIT


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + pw))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _any(*names: str) -> str:
    return "^(" + "|".join(names) + ")$" if names else "^$"


def _user(name: str, tags: list[str], passwords: Mapping[str, str], role: str) -> dict[str, Any]:
    password = passwords.get(name) or passwords.get(role)
    return {
        "name": name,
        "password_hash": password_hash(password) if password else "",
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
        "limits": {},
    }


def definitions(
    topology: Topology,
    *,
    vhost: str = "rung",
    users_prefix: str = "rung-",
    workers: Sequence[str] = (),
    passwords: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The definitions document for ``rabbitmqctl import_definitions`` (or ``load_definitions``).

    ``workers``: dedicated worker users, besides the pool user ``<prefix>worker``.
    ``passwords``: by role or by user name; users without one get none (set it later).
    """
    t = topology
    e = re.escape
    passwords = passwords or {}
    names = {role: f"{users_prefix}{role}" for role in ROLES}
    worker_users = [names["worker"], *workers]
    users = [
        _user(names["searcher"], [], passwords, "searcher"),
        *(_user(w, [], passwords, "worker") for w in worker_users),
        _user(names["client"], [], passwords, "client"),
        _user(names["operator"], [], passwords, "operator"),
        _user(names["monitor"], ["monitoring"], passwords, "monitor"),
    ]

    def permission(user: str, configure: str, write: str, read: str) -> dict[str, str]:
        return {"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read}

    # The routing keys of the work queues (the plain one and every bucket).
    work_keys = [
        e(b.routing_key)
        for b in t.bindings
        if b.exchange == t.commands_exchange and b.queue in t.work_queues
    ]
    permissions = [
        permission(
            names["searcher"],
            "^$",
            _any(e(t.commands_exchange), e(t.feed_exchange), e(t.dead_exchange), "amq\\.default"),
            _any(e(t.events_queue), e(t.heartbeats_queue), e(t.rpc_queue)),
        ),
        *(
            permission(
                w,
                _any(_PRIVATE),
                _any(e(t.events_exchange), e(t.rpc_exchange), _PRIVATE),
                _any(*(e(q) for q in t.work_queues), e(t.commands_exchange), _PRIVATE),
            )
            for w in worker_users
        ),
        permission(
            names["client"],
            _any(_PRIVATE),
            _any(e(t.rpc_exchange), _PRIVATE),
            _any(e(t.feed_exchange), _PRIVATE),
        ),
        permission(
            names["operator"],
            _any(_PRIVATE),
            _any(e(t.events_exchange), e(t.rpc_exchange), _PRIVATE),
            _any(e(t.dead_queue), e(t.feed_exchange), _PRIVATE),
        ),
        permission(names["monitor"], "^$", "^$", "^$"),
    ]
    own = r"\.{username}(\..+)?"
    topic_permissions = [
        *(
            entry
            for w in worker_users
            for entry in (
                {
                    "user": w,
                    "vhost": vhost,
                    "exchange": t.commands_exchange,
                    "write": "^$",
                    "read": f"^({'|'.join(work_keys)}|worker{own})$",
                },
                {
                    "user": w,
                    "vhost": vhost,
                    "exchange": t.events_exchange,
                    "write": f"^({e(t.EVENTS_KEY)}|{e(t.HEARTBEAT_KEY)}){own}$",
                    "read": "^$",
                },
            )
        ),
        # The operator sends an event back to the searcher; never a heartbeat, and never
        # a command (a dead command goes back through the searcher: ResendCommand).
        {
            "user": names["operator"],
            "vhost": vhost,
            "exchange": t.events_exchange,
            "write": _any(e(t.EVENTS_KEY)),
            "read": "^$",
        },
    ]
    quorum = [q.name for q in t.queues if q.quorum and q.delivery_limit is not None]
    return {
        "rabbit_version": "3.10.0",
        "rabbitmq_version": "3.10.0",
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "global_parameters": [],
        "policies": [
            {
                "vhost": vhost,
                "name": f"{t.prefix}-delivery-limit",
                "pattern": _any(*(e(name) for name in quorum)),
                "apply-to": "queues",
                "priority": 0,
                "definition": {"delivery-limit": _DELIVERY_LIMIT},
            }
        ],
        "exchanges": [
            {
                "name": x.name,
                "vhost": vhost,
                "type": x.kind,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for x in t.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": q.arguments(),
            }
            for q in t.queues
        ],
        "bindings": [
            {
                "source": b.exchange,
                "vhost": vhost,
                "destination": b.queue,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
            for b in t.bindings
        ],
    }
