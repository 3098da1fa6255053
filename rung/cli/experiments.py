"""``rung experiment`` (alias ``rung e``): create and inspect experiments on a searcher."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from broker.schemas import ExperimentSummary
from rung.cli.common import add_broker_options, broker_from
from rung.cli.render import print_summary, progress_table, summary_json
from searcher.client import SearcherClient

__all__ = ["follow", "register"]


def register(commands: Any) -> None:
    experiment = commands.add_parser("experiment", aliases=["e"], help="manage experiments")
    sub = experiment.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")
    create = sub.add_parser("create", help="create an experiment on a running searcher")
    create.add_argument("config", type=Path)
    create.add_argument("context", type=Path, help="directory with the training script")
    create.add_argument("--follow", "-f", action="store_true", help="wait until it ends")
    create.add_argument("--json", action="store_true")
    add_broker_options(create, required=True)
    create.set_defaults(handler=create_experiment)

    describe = sub.add_parser("describe", help="show an experiment and its trials")
    describe.add_argument("experiment_id")
    describe.add_argument("--json", action="store_true")
    add_broker_options(describe, required=True)
    describe.set_defaults(handler=describe_experiment)


async def follow(client: SearcherClient, experiment_id: str, *, live: bool) -> ExperimentSummary:
    if not live:
        return await client.wait(experiment_id)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=4, transient=True) as display:
        return await client.wait(
            experiment_id, on_update=lambda s: display.update(progress_table(s))
        )


def create_experiment(args: argparse.Namespace) -> int:
    async def main() -> int:
        broker = broker_from(args, "rung-client")
        await broker.start()
        try:
            client = SearcherClient(broker)
            created = await client.create_experiment(args.config, args.context)
            experiment_id = created["experiment_id"]
            if not args.follow:
                print(experiment_id)
                return 0
            print(f"created {experiment_id}", file=sys.stderr)
            summary = await follow(client, experiment_id, live=not args.json)
        finally:
            await broker.close()
        if args.json:
            print(summary_json(summary))
        else:
            print_summary(summary)
        return 0 if summary.state == "COMPLETED" else 1

    return asyncio.run(main())


def describe_experiment(args: argparse.Namespace) -> int:
    async def main() -> ExperimentSummary:
        broker = broker_from(args, "rung-client")
        await broker.start()
        try:
            return await SearcherClient(broker).describe(args.experiment_id)
        finally:
            await broker.close()

    summary = asyncio.run(main())
    if args.json:
        print(summary_json(summary))
    else:
        print_summary(summary)
    return 0
