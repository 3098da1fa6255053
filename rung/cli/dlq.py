"""``rung dlq list|requeue``: the messages Rung could not handle, and sending one back."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from rung.broker.deadletters import DeadLetter, DeadLetterError, peek, requeue
from rung.cli.common import add_broker_options, broker_from

__all__ = ["register"]


def register(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter queue: list, and send back after a fix")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="show dead letters with their reasons; leaves them there")
    listing.add_argument("--json", action="store_true")
    add_broker_options(listing, required=True)
    listing.set_defaults(handler=list_dead)
    again = sub.add_parser("requeue", help="send one dead letter back to the queue it died in")
    again.add_argument("message_id")
    again.add_argument("--json", action="store_true")
    add_broker_options(again, required=True)
    again.set_defaults(handler=requeue_dead)


def list_dead(args: argparse.Namespace) -> int:
    async def main() -> list[DeadLetter]:
        broker = broker_from(args, "rung-dlq")
        await broker.start()
        try:
            return await peek(broker)
        finally:
            await broker.close()

    letters = asyncio.run(main())
    if args.json:
        print(json.dumps([dataclasses.asdict(letter) for letter in letters]))
        return 0
    if not letters:
        print("the dead-letter queue is empty")
        return 0
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("id", "died in", "type", "bytes", "reason"):
        table.add_column(column)
    for letter in letters:
        table.add_row(
            letter.message_id,
            letter.queue,
            letter.type or "(does not decode)",
            str(letter.size),
            letter.reason,
        )
    Console().print(table)
    return 0


def requeue_dead(args: argparse.Namespace) -> int:
    async def main() -> DeadLetter:
        broker = broker_from(args, "rung-dlq")
        await broker.start()
        try:
            return await requeue(broker, args.message_id)
        finally:
            await broker.close()

    try:
        letter = asyncio.run(main())
    except DeadLetterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(letter)))
    else:
        print(f"{letter.message_id}: sent back to {letter.queue}")
    return 0
