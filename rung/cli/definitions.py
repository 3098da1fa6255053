"""``rung broker-definitions``: RabbitMQ definitions made from the topology code."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
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
        "role (searcher, worker, client, operator, monitor) with least-privilege and topic "
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
        "--password-file",
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="hash the password in PATH (a mounted secret; its first line) into the output "
        f"for ROLE ({', '.join(ROLES)}) or a user name; repeatable. Without a password a "
        "user gets none (set it with rabbitmqctl change_password)",
    )
    parser.add_argument(
        "--passwords-from-env",
        action="store_true",
        help="hash the passwords in RUNG_<ROLE>_PASSWORD (SEARCHER, WORKER, CLIENT, OPERATOR, "
        "MONITOR) into the output; prefer --password-file, which keeps them out of the "
        "environment",
    )
    parser.set_defaults(handler=print_definitions)


def _read_password(entry: str) -> tuple[str, str]:
    role, sep, path = entry.partition("=")
    if not sep or not role or not path:
        raise SystemExit(
            f"error: --password-file {entry!r}: write ROLE=PATH, e.g. "
            "--password-file worker=/run/secrets/rung-worker-password"
        )
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(
            f"error: --password-file {role}={path}: cannot read it ({exc.strerror})"
        ) from None
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise SystemExit(f"error: --password-file {role}={path}: the file is empty")
    return role, password


def print_definitions(args: argparse.Namespace) -> int:
    passwords: dict[str, str] = {}
    if args.passwords_from_env:
        for role in ROLES:
            if value := os.environ.get(f"RUNG_{role.upper()}_PASSWORD"):
                passwords[role] = value
    for entry in args.password_file:
        role, password = _read_password(entry)
        passwords[role] = password
    document = definitions(
        Topology(args.namespace),
        vhost=args.vhost,
        users_prefix=args.users_prefix,
        workers=args.worker,
        passwords=passwords,
    )
    print(json.dumps(document, indent=2))
    return 0
