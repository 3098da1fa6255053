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
import uuid
from pathlib import Path
from typing import Any

from broker import Broker, Topology, connect_broker
from rung.cli.common import add_broker_options, stop_on_signals, tls_from
from rung.cli.experiments import follow
from rung.cli.render import print_summary, summary_json
from searcher.client import SearcherClient
from searcher.config import load_config_file
from searcher.service.service import SearcherService
from worker.agent import Worker
from worker.gpus import parse_gpus

__all__ = ["register"]


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="run an experiment here: searcher plus N workers")
    run.add_argument("config", type=Path)
    run.add_argument("context", type=Path, help="directory with the training script")
    run.add_argument("--workers", type=int, default=2, help="workers to start (default 2)")
    run.add_argument(
        "--gpus", default="auto", help="GPUs to share out among the workers: auto, none or 0,1"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".rung"),
        help="event logs, contexts and checkpoints (default ./.rung)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object at the end")
    add_broker_options(run)
    run.set_defaults(handler=run_experiment)


def run_experiment(args: argparse.Namespace) -> int:
    load_config_file(args.config)  # refuse a bad config before starting anything
    gpus = parse_gpus(args.gpus)
    return asyncio.run(_run(args, gpus))


def _brokers(args: argparse.Namespace, count: int) -> list[Broker]:
    namespace = f"{args.namespace}-run-{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace)
    tls = tls_from(args)
    if not args.broker:
        shared = connect_broker(None, topology, tls=tls)
        return [shared] * count
    return [
        connect_broker(args.broker, topology, name=f"rung-run-{i}", tls=tls) for i in range(count)
    ]


async def _run(args: argparse.Namespace, gpus: list[str]) -> int:
    workers = max(args.workers, 1)
    brokers = _brokers(args, workers + 2)
    for broker in dict.fromkeys(brokers):
        await broker.start()
    stop = stop_on_signals()
    service = SearcherService(brokers[0], args.state_dir.resolve())
    agents = [
        Worker(
            brokers[2 + i],
            worker_id=f"local-{i + 1}",
            gpus=gpus[i::workers] if gpus else None,
            work_dir=args.state_dir.resolve() / "workers" / f"local-{i + 1}",
        )
        for i in range(workers)
    ]
    tasks = [asyncio.create_task(service.run(stop))]
    tasks += [asyncio.create_task(agent.run(stop)) for agent in agents]
    client = SearcherClient(brokers[1])
    summary = None
    try:
        created = await client.create_experiment(args.config, args.context)
        following = asyncio.create_task(
            follow(client, created["experiment_id"], live=not args.json)
        )
        interrupted = asyncio.create_task(stop.wait())
        await asyncio.wait({following, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if following.done():
            summary = following.result()
        else:
            following.cancel()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for broker in list(dict.fromkeys(brokers))[1:]:
            await broker.close()
        with contextlib.suppress(Exception):
            await brokers[0].delete_topology()
        await brokers[0].close()
    if summary is None:
        # Ctrl-C or SIGTERM: the trials were asked to checkpoint and stop.
        print(f"interrupted; the event log is at {created['event_log']}", file=sys.stderr)
        return 130
    if args.json:
        print(summary_json(summary))
    else:
        print_summary(summary)
    return 0 if summary.state == "COMPLETED" else 1
