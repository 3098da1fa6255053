"""``rung searcher`` and ``rung worker``: the long-running processes of a cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rung.cli.common import (
    add_broker_options,
    broker_from,
    default_state_dir,
    run_client,
    stop_on_signals,
)
from rung.cli.render import workers_table
from rung.client import Client
from rung.searcher.service.service import SearcherService
from rung.worker.agent import Worker
from rung.worker.gpus import parse_gpus
from rung.worker.spawn import START_METHODS

__all__ = ["register"]


def register(commands: Any) -> None:
    searcher = commands.add_parser("searcher", help="run the searcher service")
    add_broker_options(searcher, required=True)
    searcher.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="event logs, contexts and default checkpoints "
        "(default: $RUNG_STATE_DIR or ~/.rung/searcher)",
    )
    searcher.add_argument(
        "--worker-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a worker silent this long (no heartbeat, no event) is lost, and its trials "
        "resume elsewhere from their checkpoints (default 30; workers beat every 5 s)",
    )
    searcher.add_argument(
        "--shared-state-dir",
        action="store_true",
        help="the state directory is on shared storage (NFS and the like) where file locks "
        "cannot be trusted: a searcher started on it takes over every experiment there, and "
        "the one it took them from stops acting on them (owner epochs in the logs)",
    )
    searcher.add_argument(
        "--verify-worker-users",
        action="store_true",
        help="refuse (dead-letter) a worker event unless its worker id is the broker user "
        "that sent it, or <user>.<suffix>: with deploy/rabbitmq's least-privilege users, "
        "a worker cannot speak for another",
    )
    _health_option(searcher, "after every tick of its timers (every worker-timeout/4 s)")
    searcher.set_defaults(handler=run_searcher)

    worker = commands.add_parser(
        "worker", help="run a worker: one trial per slot; `rung worker list`: live workers"
    )
    worker.add_argument(
        "action",
        nargs="?",
        choices=("run", "list"),
        default="run",
        help="run (the default) a worker here, or list the workers the searcher hears from",
    )
    worker.add_argument("--json", action="store_true", help="for list: JSON instead of a table")
    add_broker_options(worker, required=True)
    worker.add_argument(
        "--slots", type=int, default=1, help="CPU slots to offer when there are no GPUs (default 1)"
    )
    worker.add_argument(
        "--gpus",
        default="auto",
        help="auto (nvidia-smi or CUDA_VISIBLE_DEVICES), none, or a list: 0,1",
    )
    worker.add_argument("--id", dest="worker_id", default=None, help="worker id")
    worker.add_argument(
        "--work-dir", type=Path, default=None, help="where contexts are cached and trials run"
    )
    worker.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often to tell the searcher this worker is alive (default 5)",
    )
    worker.add_argument(
        "--hang-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="kill a training process that makes no Core API call (progress, metrics, "
        "checkpoint, should_preempt) for this long; it counts as an error, so max_restarts "
        "applies. Leave room for imports and data loading (default 0: off)",
    )
    worker.add_argument(
        "--start-method",
        choices=START_METHODS,
        default="fork-server",
        help="how training processes start: fork-server (default) forks them from a warm "
        "process with the Core API loaded, a few ms each; exec starts a fresh "
        "interpreter for each (about 100 ms more), for scripts that need one",
    )
    _health_option(worker, "after every heartbeat the broker confirmed")
    worker.set_defaults(handler=run_worker)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 if a --health-file was touched recently (container health checks)",
        description="Exit 0 when FILE was touched within --max-age seconds, else 1, with "
        "the reason on stderr. Searchers and workers touch their --health-file while they "
        "are healthy.",
    )
    health.add_argument("file", type=Path, metavar="FILE")
    health.add_argument("--max-age", type=float, default=60.0, metavar="SECONDS")
    health.set_defaults(handler=healthcheck)


def _health_option(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument(
        "--health-file",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"touch this file {when}; `rung healthcheck PATH` checks it",
    )


def healthcheck(args: argparse.Namespace) -> int:
    try:
        age = time.time() - args.file.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {args.file} does not exist (not started yet?)", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(
            f"unhealthy: {args.file} was last touched {age:.0f} s ago "
            f"(more than --max-age {args.max_age:g} s)",
            file=sys.stderr,
        )
        return 1
    return 0


def _require_broker(args: argparse.Namespace) -> None:
    if not args.broker:
        raise SystemExit(
            "error: --broker URL (or RUNG_BROKER_URL) is required: searchers "
            "and workers on separate processes meet on RabbitMQ"
        )


def run_searcher(args: argparse.Namespace) -> int:
    _require_broker(args)

    async def main() -> None:
        stop = stop_on_signals()
        broker = broker_from(args, "rung-searcher")
        await broker.start()
        try:
            service = SearcherService(
                broker,
                args.state_dir or default_state_dir(),
                worker_timeout_s=args.worker_timeout,
                shared_state_dir=args.shared_state_dir,
                verify_worker_users=args.verify_worker_users,
                health_file=args.health_file,
            )
            await service.run(stop)
        finally:
            await broker.close()

    asyncio.run(main())
    return 0


def list_workers(args: argparse.Namespace) -> int:
    async def main(client: Client) -> int:
        workers = await client.list_workers()
        if args.json:
            print(json.dumps([w.model_dump(mode="json") for w in workers]))
        else:
            Console().print(workers_table(workers))
        return 0

    return run_client(args, main)


def run_worker(args: argparse.Namespace) -> int:
    if args.action == "list":
        return list_workers(args)
    _require_broker(args)
    try:
        gpus = parse_gpus(args.gpus)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None

    async def main() -> None:
        stop = stop_on_signals()
        broker = broker_from(args, "rung-worker")
        await broker.start()
        try:
            worker = Worker(
                broker,
                worker_id=args.worker_id,
                slots=args.slots,
                gpus=gpus,
                work_dir=args.work_dir,
                heartbeat_s=args.heartbeat,
                hang_timeout_s=args.hang_timeout or None,
                start_method=args.start_method,
                health_file=args.health_file,
            )
            await worker.run(stop)
        finally:
            await broker.close()

    asyncio.run(main())
    return 0
