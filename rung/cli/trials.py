"""``rung trial`` (alias ``rung t``): one trial of an experiment."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rung.broker.limits import MAX_RANK
from rung.cli.common import add_broker_options, run_client
from rung.cli.render import console_text, print_trial, trial_json
from rung.client import Client
from rung.launch.wrap_rank import as_rank

__all__ = ["register"]


def register(commands: Any) -> None:
    trial = commands.add_parser("trial", aliases=["t"], help="inspect and kill trials")
    sub = trial.add_subparsers(dest="trial_command", required=True, metavar="COMMAND")
    describe = sub.add_parser("describe", help="a trial's state, length, metric, checkpoint")
    logs = sub.add_parser("logs", help="what a trial's processes wrote; --follow for more")
    logs.add_argument("--follow", "-f", action="store_true", help="until the trial ends")
    logs.add_argument(
        "--rank",
        type=_rank,
        metavar="N",
        help="only the lines of rank N of a distributed trial (tagged by rung.launch)",
    )
    kill = sub.add_parser("kill", help="kill a trial's process; the search goes on")
    for parser, handler in ((describe, describe_trial), (logs, trial_logs), (kill, kill_trial)):
        parser.add_argument("experiment_id")
        parser.add_argument("trial_id", type=int)
        parser.add_argument("--json", action="store_true", help="JSON instead of text")
        add_broker_options(parser, required=True)
        parser.set_defaults(handler=handler)


def _rank(text: str) -> int:
    rank = as_rank(text)
    if rank is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rank: give a whole number from 0 to {MAX_RANK}"
        )
    return rank


def describe_trial(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        trial = await client.experiment(args.experiment_id).trial(args.trial_id).describe()
        if args.json:
            print(json.dumps(trial_json(trial, full=True)))
        else:
            print_trial(trial)
        return 0

    return run_client(args, main)


def trial_logs(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        trial = client.experiment(args.experiment_id).trial(args.trial_id)
        async for line in trial.logs(follow=args.follow, rank=args.rank):
            if args.json:
                print(line.model_dump_json(), flush=True)
            else:
                # On a terminal, control characters show as \xNN: a script's output
                # cannot move the cursor, retitle the window or hide what follows.
                rank = f"[rank={line.rank}] " if line.rank is not None else ""
                print(console_text(f"[{line.attempt}] {rank}{line.text}"), flush=True)
        return 0

    return run_client(args, main)


def kill_trial(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        state = await client.experiment(args.experiment_id).trial(args.trial_id).kill()
        if args.json:
            print(
                json.dumps(
                    {"experiment_id": args.experiment_id, "trial_id": args.trial_id, "state": state}
                )
            )
        else:
            print(console_text(f"{args.experiment_id} trial {args.trial_id}: now {state}"))
        return 0

    return run_client(args, main)
