"""``rung dlq list|requeue``: the messages Rung could not handle, and sending one back.

Both work with the operator's broker user (``rung-operator`` of ``rung
broker-definitions``: it may read the dead queue and send a dead letter back), or an
admin's. ``requeue`` sends back only what the broker vouches for (``broker.deadletters``):
a command (run_trial, ...) only if the searcher sent it, and through the searcher, which
publishes again what its log holds under that id (the operator may not write the
commands exchange); an event or request with its original sender named for the searcher
to check. Everything in a dead letter came from the wire: it is
shown as text, never as markup, with control characters escaped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rung.broker.deadletters import (
    DeadLetter,
    DeadLetterError,
    peek,
    requeue,
    searcher_user_for,
)
from rung.cli.common import add_broker_options, broker_from

__all__ = ["register"]


def register(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter queue: list, and send back after a fix")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="show dead letters with their reasons; leaves them there")
    listing.add_argument("--json", action="store_true")
    _add_options(listing)
    listing.set_defaults(handler=list_dead)
    again = sub.add_parser(
        "requeue",
        help="send one dead letter back to the queue it died in, if the broker vouches "
        "for its sender (a run_trial only if the searcher sent it: the searcher, which "
        "must be running, sends it again from its log)",
    )
    again.add_argument("message_id")
    again.add_argument("--json", action="store_true")
    _add_options(again)
    again.set_defaults(handler=requeue_dead)


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--searcher-user",
        default=os.environ.get("RUNG_SEARCHER_USER"),
        metavar="USER",
        help="the searcher's broker user: dead letters it moved are believed, and only "
        "its commands are sent back (default: $RUNG_SEARCHER_USER, else PREFIXsearcher "
        "beside an operator user PREFIXoperator, guest beside guest, else rung-searcher)",
    )
    add_broker_options(parser, required=True)


def _searcher_user(args: argparse.Namespace, operator_user: str | None) -> str:
    return str(args.searcher_user or searcher_user_for(operator_user))


def _shown(value: object) -> str:
    """Wire data as a terminal shows it as written: control characters as ``\\xNN``."""
    return "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in str(value)
    )


def _cell(value: object) -> Text:
    return Text(_shown(value))  # a Text is never parsed as markup


def list_dead(args: argparse.Namespace) -> int:
    async def main() -> list[DeadLetter]:
        broker = broker_from(args, "rung-dlq")
        await broker.start()
        try:
            return await peek(broker, searcher_user=_searcher_user(args, broker.username))
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
    for column in ("id", "died in", "type", "bytes", "sent by", "moved by", "reason"):
        table.add_column(column)
    for letter in letters:
        table.add_row(
            _cell(letter.message_id),
            _cell(letter.queue),
            _cell(letter.type or "(does not decode)"),
            _cell(letter.size),
            _cell(letter.sender or "(nobody vouches)"),
            _cell(letter.moved_by if letter.moved_by != "unknown" else "unknown: claims only"),
            _cell(letter.reason),
        )
    Console().print(table)
    return 0


def requeue_dead(args: argparse.Namespace) -> int:
    async def main() -> DeadLetter:
        broker = broker_from(args, "rung-dlq")
        await broker.start()
        try:
            return await requeue(
                broker, args.message_id, searcher_user=_searcher_user(args, broker.username)
            )
        finally:
            await broker.close()

    try:
        letter = asyncio.run(main())
    except DeadLetterError as exc:
        print(f"error: {_shown(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(letter)))
    else:
        print(f"{_shown(letter.message_id)}: sent back to {_shown(letter.queue)}")
    return 0
