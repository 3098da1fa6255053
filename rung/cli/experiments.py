"""``rung experiment`` (alias ``rung e``): create, inspect and control experiments.

Every command is built on ``rung.Client``, and takes ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live

from rung.broker.schemas import ExperimentSummary
from rung.cli.common import add_broker_options, run_client
from rung.cli.render import (
    checkpoints_table,
    console_text,
    experiments_table,
    print_summary,
    progress_view,
    summary_json,
    trial_json,
    trials_table,
)
from rung.client import Client, Experiment, lineage_of
from rung.export import FORMATS, ExportError, ExportResult, export_experiment
from rung.searcher.eventlog import InputRecord, replay
from rung.searcher.eventlog.explain import entry, print_entry
from rung.searcher.eventlog.replay import fold
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["follow", "register"]

EXIT_USAGE: Final = 2  # rung.cli.main's code for bad input (docs/cli.md)

CONTROL_HELP: Final = {
    "pause": "preempt the running trials (they checkpoint) and start none until activated",
    "activate": "resume a paused experiment: its trials continue from their checkpoints",
    "cancel": "stop the experiment: running trials checkpoint and exit, then it is CANCELED",
    "kill": "stop the experiment now: trial processes are killed without a checkpoint",
}


def register(commands: Any) -> None:
    experiment = commands.add_parser("experiment", aliases=["e"], help="manage experiments")
    sub = experiment.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Any, *, with_id: bool = True) -> Any:
        parser = sub.add_parser(name, help=help_text)
        if with_id:
            parser.add_argument("experiment_id")
        parser.add_argument("--json", action="store_true", help="JSON instead of text")
        add_broker_options(parser, required=True)
        parser.set_defaults(handler=handler)
        return parser

    create = command(
        "create", "create an experiment on a running searcher", create_experiment, with_id=False
    )
    create.add_argument("config", type=Path)
    create.add_argument("context", type=Path, help="directory with the training script")
    create.add_argument("--follow", "-f", action="store_true", help="wait until it ends")

    listing = command("list", "experiments on the searcher", list_experiments, with_id=False)
    listing.add_argument("--state", action="append", help="only these states (repeatable)")
    listing.add_argument("--label", help="only experiments with this label")

    command("describe", "an experiment and its trials", describe_experiment)
    command("list-trials", "an experiment's trials", list_trials)
    command("list-checkpoints", "the checkpoints its trials saved", list_checkpoints)

    logs = command("logs", "an experiment's timeline; --follow for live records", experiment_logs)
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing records as the searcher writes them, until the end",
    )
    logs.add_argument(
        "--all", action="store_true", help="also show checkpoints, metrics, progress and log lines"
    )
    command(
        "wait",
        "wait until an experiment ends, with live progress; exit 0 if it completed",
        wait_experiment,
    )
    for action, text in CONTROL_HELP.items():
        command(action, text, control_experiment).set_defaults(action=action)

    export = command(
        "export",
        "write every trial's metrics into DIR: CSV, JSON lines or TensorBoard event files",
        export_metrics,
    )
    export.add_argument(
        "--format",
        dest="export_format",
        required=True,
        choices=FORMATS,
        help="csv: trial-ID.csv; jsonl: trial-ID.jsonl; "
        "tensorboard: trial-ID/events.out.tfevents.* (a TensorBoard run per trial)",
    )
    export.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="where the files go (created if missing), with experiment.json",
    )
    export.add_argument(
        "--force", action="store_true", help="replace the files an earlier export left in DIR"
    )


# ---------------------------------------------------------------------- commands
def create_experiment(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        experiment = await client.create_experiment(args.config, args.context)
        if not args.follow:
            print(json.dumps({"experiment_id": experiment.id}) if args.json else experiment.id)
            return 0
        print(f"created {experiment.id}", file=sys.stderr)
        return _report(await follow(experiment, live=not args.json), as_json=args.json)

    return run_client(args, main)


def list_experiments(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        found = await client.list_experiments(state=args.state, label=args.label)
        if args.json:
            print(json.dumps([_listing_json(s) for s in found]))
        else:
            Console().print(experiments_table(found))
        return 0

    return run_client(args, main)


def describe_experiment(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        experiment = client.experiment(args.experiment_id)
        summary = await experiment.describe()
        if args.json:
            print(summary_json(summary))  # the lineage as the searcher gave it
            return 0
        try:  # each copy's source (population-based training), for the table
            lineage = lineage_of(summary)
        except ValidationError as exc:  # a newer searcher's record: the table goes without
            print(console_text(f"lineage not shown: {exc}", sys.stderr), file=sys.stderr)
            lineage = None
        print_summary(summary, lineage=lineage)
        return 0

    return run_client(args, main)


def list_trials(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        summary = await client.experiment(args.experiment_id).describe()
        if args.json:
            print(json.dumps([trial_json(t, full=True) for t in summary.trials]))
        else:
            Console().print(trials_table(summary))
        return 0

    return run_client(args, main)


def list_checkpoints(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        checkpoints = await client.experiment(args.experiment_id).checkpoints()
        if args.json:
            print(json.dumps([c.model_dump(mode="json") for c in checkpoints]))
        else:
            Console().print(checkpoints_table(checkpoints))
        return 0

    return run_client(args, main)


def wait_experiment(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        experiment = client.experiment(args.experiment_id)
        return _report(await follow(experiment, live=not args.json), as_json=args.json)

    return run_client(args, main)


def control_experiment(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        result = await client.rpc.control(args.experiment_id, args.action)
        if args.json:
            print(json.dumps(result))
        elif result["ignored"]:
            print(console_text(f"{args.experiment_id}: nothing to do: {result['ignored']}"))
        else:
            print(console_text(f"{args.experiment_id}: {args.action}: now {result['state']}"))
        return 0

    return run_client(args, main)


def experiment_logs(args: argparse.Namespace) -> int:
    """The history, explained record by record; with --follow, then live records."""

    async def main(client: Client) -> int:
        experiment = client.experiment(args.experiment_id)
        records = await experiment.history()
        ended: list[bool] = []  # set once the experiment's shutdown is shown

        def show(record: InputRecord, step: Step, run: ExperimentRun) -> None:
            _show(entry(record, step, run, show_all=args.all), as_json=args.json)
            if any(op.type == "shutdown" for op in step.ops):
                ended.append(True)

        result = replay(records, on_step=show) if records else None
        if not args.follow or ended or result is None:
            return 0
        async for record in experiment.watch(after_seq=records[-1].seq):
            if isinstance(record, InputRecord):
                run = result.run
                step = fold(run, record)  # as replay: the logged suggestions, the failures
                show(record, step, run)
            if ended:
                break
        return 0

    return run_client(args, main)


def export_metrics(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        experiment = client.experiment(args.experiment_id)
        # Metrics first: any trial that reported them is then in the description too.
        reports = await experiment.metrics()
        summary = await experiment.describe()
        try:
            result = export_experiment(
                summary, reports, args.directory, args.export_format, force=args.force
            )
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(_export_json(summary.experiment_id, result)))
        else:
            print(console_text(_export_text(summary.experiment_id, result)))
        return 0

    return run_client(args, main)


# ---------------------------------------------------------------------- helpers
async def follow(experiment: Experiment, *, live: bool) -> ExperimentSummary:
    """Wait for the end; on a terminal, with a live progress bar and table."""
    rpc = experiment.client.rpc
    if not live:
        return await rpc.wait(experiment.id)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=4, transient=True) as display:
        return await rpc.wait(experiment.id, on_update=lambda s: display.update(progress_view(s)))


def _report(summary: ExperimentSummary, *, as_json: bool) -> int:
    """Print how the experiment ended; exit 0 only if it completed."""
    if as_json:
        print(summary_json(summary))
    else:
        print_summary(summary)
    return 0 if summary.state == "COMPLETED" else 1


def _listing_json(summary: ExperimentSummary) -> dict[str, Any]:
    return {
        "experiment_id": summary.experiment_id,
        "name": summary.name,
        "state": summary.state,
        "progress": summary.progress,
        "labels": summary.labels,
        "event_log": summary.event_log,
    }


def _export_json(experiment_id: str, result: ExportResult) -> dict[str, Any]:
    return {
        "experiment_id": experiment_id,
        "format": result.format,
        "directory": str(result.directory),
        "files": list(result.files),
        "trials": result.trials,
        "reports": result.reports,
        "scalars": result.scalars,
        "skipped": dict(result.skipped),
        "replaced": list(result.replaced),
    }


def _export_text(experiment_id: str, result: ExportResult) -> str:
    lines = [
        f"{experiment_id}: {result.reports} metric reports of {result.trials} trials "
        f"written to {result.directory} as {result.format}"
        + (f", replacing {len(result.replaced)} file(s)" if result.replaced else "")
    ]
    if result.format == "tensorboard":
        left_out = sum(result.skipped.values())
        reasons = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in result.skipped.items())
        lines.append(
            f"{result.scalars} scalars"
            + (f"; {left_out} values left out ({reasons})" if left_out else "")
        )
        lines.append(f"view them with: tensorboard --logdir {shlex.quote(str(result.directory))}")
    return "\n".join(lines)


def _show(item: dict[str, Any] | None, *, as_json: bool) -> None:
    if item is not None:
        print(json.dumps(item) if as_json else console_text(print_entry(item)), flush=True)
