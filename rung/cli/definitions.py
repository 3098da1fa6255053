"""``rung broker-definitions``: RabbitMQ definitions made from the topology code."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rung.broker.definitions import ROLES, definitions
from rung.broker.topology import Topology

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "broker-definitions",
        help="print RabbitMQ definitions: the topology and least-privilege users",
        description="Print the definitions (JSON) for rabbitmqctl import_definitions or "
        "load_definitions: vhost, exchanges, queues, bindings, policies and one user per "
        "role (searcher, worker, client, monitor) with least-privilege and topic "
        "permissions. deploy/rabbitmq/definitions.json is this command's output.",
    )
    parser.add_argument("--namespace", default="rung", help="the topology's prefix (default rung)")
    parser.add_argument("--vhost", default="rung", help="the vhost (default rung)")
    parser.add_argument(
        "--users-prefix", default="rung-", help="user names are PREFIX+role (default rung-)"
    )
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="NAME",
        help="a dedicated worker user (repeatable), besides the pool user PREFIXworker",
    )
    parser.add_argument(
        "--passwords-from-env",
        action="store_true",
        help="hash the passwords in RUNG_<ROLE>_PASSWORD (SEARCHER, WORKER, CLIENT, MONITOR) "
        "into the output; without it users get no password (set them with rabbitmqctl "
        "change_password)",
    )
    parser.set_defaults(handler=print_definitions)


def print_definitions(args: argparse.Namespace) -> int:
    passwords: dict[str, str] = {}
    if args.passwords_from_env:
        for role in ROLES:
            if value := os.environ.get(f"RUNG_{role.upper()}_PASSWORD"):
                passwords[role] = value
    document = definitions(
        Topology(args.namespace),
        vhost=args.vhost,
        users_prefix=args.users_prefix,
        workers=args.worker,
        passwords=passwords,
    )
    print(json.dumps(document, indent=2))
    return 0
