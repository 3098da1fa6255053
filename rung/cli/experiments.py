"""``rung experiment`` (alias ``rung e``): create and inspect experiments on a searcher."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.live import Live

from broker.port import Delivery
from broker.schemas import ExperimentSummary
from rung.cli.common import add_broker_options, broker_from
from rung.cli.render import print_summary, progress_table, summary_json
from searcher.client import SearcherClient
from searcher.eventlog import InputRecord, Record, read_log, replay
from searcher.eventlog.explain import entry, print_entry
from searcher.eventlog.records import record_adapter
from searcher.trials import ExperimentRun, Step

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

    logs = sub.add_parser("logs", help="an experiment's timeline; --follow for live records")
    logs.add_argument("experiment_id")
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing records as the searcher writes them, until the end",
    )
    logs.add_argument(
        "--all", action="store_true", help="also show checkpoints, metrics, progress and log lines"
    )
    logs.add_argument("--json", action="store_true", help="one JSON timeline entry a line")
    add_broker_options(logs, required=True)
    logs.set_defaults(handler=experiment_logs)

    wait = sub.add_parser(
        "wait", help="wait until an experiment ends, with live progress; exit 0 if it completed"
    )
    wait.add_argument("experiment_id")
    wait.add_argument("--json", action="store_true", help="no progress; the summary as JSON")
    add_broker_options(wait, required=True)
    wait.set_defaults(handler=wait_experiment)

    for action, text in CONTROL_HELP.items():
        control = sub.add_parser(action, help=text)
        control.add_argument("experiment_id")
        control.add_argument("--json", action="store_true")
        add_broker_options(control, required=True)
        control.set_defaults(handler=control_experiment, action=action)


CONTROL_HELP: Final = {
    "pause": "preempt the running trials (they checkpoint) and start none until activated",
    "activate": "resume a paused experiment: its trials continue from their checkpoints",
    "cancel": "stop the experiment: running trials checkpoint and exit, then it is CANCELED",
    "kill": "stop the experiment now: trial processes are killed without a checkpoint",
}


def control_experiment(args: argparse.Namespace) -> int:
    async def main() -> dict[str, Any]:
        broker = broker_from(args, "rung-client")
        await broker.start()
        try:
            return await SearcherClient(broker).control(args.experiment_id, args.action)
        finally:
            await broker.close()

    result = asyncio.run(main())
    if args.json:
        print(json.dumps(result))
    elif result["ignored"]:
        print(f"{args.experiment_id}: nothing to do: {result['ignored']}")
    else:
        print(f"{args.experiment_id}: {args.action}: now {result['state']}")
    return 0


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
        return _report(summary, as_json=args.json)

    return asyncio.run(main())


def wait_experiment(args: argparse.Namespace) -> int:
    async def main() -> ExperimentSummary:
        broker = broker_from(args, "rung-client")
        await broker.start()
        try:
            return await follow(SearcherClient(broker), args.experiment_id, live=not args.json)
        finally:
            await broker.close()

    return _report(asyncio.run(main()), as_json=args.json)


def _report(summary: ExperimentSummary, *, as_json: bool) -> int:
    """Print how the experiment ended; exit 0 only if it completed."""
    if as_json:
        print(summary_json(summary))
    else:
        print_summary(summary)
    return 0 if summary.state == "COMPLETED" else 1


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


def _show(item: dict[str, Any] | None, *, as_json: bool) -> None:
    if item is not None:
        print(json.dumps(item) if as_json else print_entry(item), flush=True)


def experiment_logs(args: argparse.Namespace) -> int:
    """History from the log file, then (with --follow) records from the live feed.

    The feed queue is bound before the history is read, so no record falls in between;
    records already printed are skipped by sequence number.
    """

    async def main() -> int:
        broker = broker_from(args, "rung-logs")
        await broker.start()
        live: asyncio.Queue[Record] = asyncio.Queue()
        try:
            if args.follow:
                queue = await broker.declare_private_queue(
                    (broker.topology.feed_exchange, args.experiment_id)
                )

                async def on_record(delivery: Delivery) -> None:
                    await delivery.ack()
                    live.put_nowait(record_adapter.validate_json(delivery.body))

                await broker.subscribe(queue, on_record, prefetch=256)
            summary = await SearcherClient(broker).describe(args.experiment_id)
            return await _print_log(args, Path(summary.event_log), live)
        finally:
            await broker.close()

    return asyncio.run(main())


def _history(path: Path) -> Sequence[Record]:
    return read_log(path) if path.is_file() else []


async def _print_log(args: argparse.Namespace, path: Path, live: asyncio.Queue[Record]) -> int:
    shown = 0
    finished = False

    def show(record: InputRecord, step: Step, run: ExperimentRun) -> None:
        nonlocal finished
        _show(entry(record, step, run, show_all=args.all), as_json=args.json)
        finished = finished or any(op.type == "shutdown" for op in step.ops)

    records = await asyncio.to_thread(_history, path)
    if not records:
        print(f"note: {path} is not readable here; showing live records only", file=sys.stderr)
    result = replay(records, on_step=show) if records else None
    shown = records[-1].seq if records else 0
    while args.follow and not finished:
        record = await live.get()
        if record.seq <= shown or result is None or not isinstance(record, InputRecord):
            continue
        shown = record.seq
        step = result.run.start() if record.input is None else result.run.on_event(record.input)
        show(record, step, result.run)
    return 0
