"""``rung run CONFIG CONTEXT``: a searcher and N workers in one process, one command.

Without ``--broker`` (or ``RUNG_BROKER_URL``) they meet on the in-process broker; with an
AMQP URL, on RabbitMQ, under a namespace of their own that is removed at the end. Trials
always run as real subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from rung.cli.common import add_broker_options, broker_url, stop_on_signals, tls_from
from rung.cli.dashboard import add_dashboard_options, announce, dashboard_key
from rung.cli.experiments import follow
from rung.cli.render import print_summary, summary_json
from rung.client import Client
from rung.dashboard import ClientSource, Dashboard
from rung.searcher.config import load_config_file
from rung.worker.gpus import parse_gpus
from rung.worker.spawn import START_METHODS

__all__ = ["register"]


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="run an experiment here: searcher plus N workers")
    run.add_argument("config", type=Path)
    run.add_argument("context", type=Path, help="directory with the training script")
    run.add_argument("--workers", type=int, default=2, help="workers to start (default 2)")
    run.add_argument(
        "--slots",
        type=int,
        default=1,
        help="CPU slots of each worker when there are no GPUs (default 1); a trial of "
        "resources.slots_per_trial N needs a worker of its work bucket (N up to 8; "
        "16, 32 or 64 above)",
    )
    run.add_argument(
        "--gpus", default="auto", help="GPUs to share out among the workers: auto, none or 0,1"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".rung"),
        help="event logs, contexts and checkpoints (default ./.rung)",
    )
    run.add_argument(
        "--start-method",
        choices=START_METHODS,
        default="fork-server",
        help="how the workers start training processes, as rung worker --start-method "
        "(default fork-server; exec: a fresh interpreter for each)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object at the end")
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the web dashboard of this run while it runs, and print its address",
    )
    add_dashboard_options(run, prefix="dashboard-")
    add_broker_options(run)
    run.set_defaults(handler=run_experiment)


def run_experiment(args: argparse.Namespace) -> int:
    if args.slots < 1:
        raise SystemExit(f"--slots {args.slots}: a worker has at least 1 slot; give 1 or more")
    load_config_file(args.config)  # refuse a bad config before starting anything
    gpus = parse_gpus(args.gpus)
    return asyncio.run(_run(args, gpus))


async def _started(client: Client, stop: asyncio.Event) -> bool:
    """Start the embedded searcher and workers; False if ``stop`` came first (what had
    started is stopped again: a slow fork server does not hold a Ctrl-C)."""
    connecting = asyncio.ensure_future(client.connect())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()  # (the cluster's start stops what it started)
        await asyncio.gather(connecting, return_exceptions=True)
    if connecting.cancelled():
        return False
    connecting.result()  # (its error, if any: a worker that could not start)
    if stop.is_set():  # (both at once)
        await client.close()
        return False
    return True


async def _run(args: argparse.Namespace, gpus: list[str]) -> int:
    stop = stop_on_signals()
    client = Client.local(
        args.state_dir.resolve(),
        workers=max(args.workers, 1),
        slots=args.slots,
        gpus=gpus,
        broker_url=broker_url(args) or None,
        tls=tls_from(args),
        namespace=args.namespace,
        start_method=args.start_method,
    )
    if not await _started(client, stop):
        # Ctrl-C or SIGTERM while the searcher and workers started: they stopped again.
        print("interrupted before the run started", file=sys.stderr)
        return 130
    summary = None
    async with client, contextlib.AsyncExitStack() as stack:
        if args.dashboard:
            contexts = args.state_dir.resolve() / "contexts"
            dashboard = await stack.enter_async_context(
                Dashboard(
                    ClientSource(client),
                    host=args.dashboard_host,
                    port=args.dashboard_port,
                    allowed_hosts=args.dashboard_allow_host,
                    key=dashboard_key(args, prefix="dashboard_"),
                    # This run's own code: its custom search method may be rebuilt.
                    context_root=contexts,
                    allow_custom=True,
                )
            )
            announce(dashboard, stream=sys.stderr)
        experiment = await client.create_experiment(args.config, args.context)
        following = asyncio.create_task(follow(experiment, live=not args.json))
        interrupted = asyncio.create_task(stop.wait())
        await asyncio.wait({following, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if following.done():
            summary = following.result()
        else:
            following.cancel()
        event_log = (await experiment.describe()).event_log
    if summary is None:
        # Ctrl-C or SIGTERM: the trials were asked to checkpoint and stop.
        print(f"interrupted; the event log is at {event_log}", file=sys.stderr)
        return 130
    if args.json:
        print(summary_json(summary))
    else:
        print_summary(summary)
    return 0 if summary.state == "COMPLETED" else 1
