"""``rung searcher`` and ``rung worker``: the long-running processes of a cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rung.broker.schemas.gang import ADDRESS_PATTERN
from rung.cli.common import (
    add_broker_options,
    broker_from,
    default_state_dir,
    parse_duration,
    run_client,
    stop_on_signals,
)
from rung.cli.render import workers_view
from rung.client import Client
from rung.searcher.service.service import SearcherService
from rung.worker.agent import Worker, default_work_dir
from rung.worker.environment import check_allow_name
from rung.worker.gpus import parse_gpus
from rung.worker.privileges import (
    PrivilegeError,
    TrialUser,
    check_can_switch,
    harden_process,
    prepare_private_dir,
    private_umask,
    resolve_group,
    resolve_trial_user,
)
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
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse (dead-letter) a worker event unless its worker id is the broker user "
        "that sent it, or <user>.<suffix>: with deploy/rabbitmq's least-privilege users, "
        "a worker cannot speak for another (default: on; --no-verify-worker-users for a "
        "development broker where workers share one user under other ids)",
    )
    searcher.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="USER",
        help="a broker user with the admin role: reads and controls every experiment "
        "(repeatable); see docs/security.md",
    )
    searcher.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="USER",
        help="a broker user with the operator role: an admin who may also re-send dead "
        "letters with `rung dlq requeue` (repeatable)",
    )
    searcher.add_argument(
        "--worker-user",
        action="append",
        default=[],
        metavar="USER",
        help="a broker user with the worker role, beside <prefix>worker (repeatable)",
    )
    searcher.add_argument(
        "--allow-custom-searchers",
        action="store_true",
        help="accept experiments with searcher.name: custom, whose uploaded code the "
        "searcher runs; off by default (docs/security.md says where it runs)",
    )
    searcher.add_argument(
        "--context-retention",
        type=parse_duration,
        default=7 * 86400.0,
        metavar="DURATION",
        help="remove an ended experiment's context this long after it ended, unless another "
        "experiment uses it: seconds, or 30m, 12h, 7d (default 7d; 0 keeps them for ever)",
    )
    _dir_group_option(searcher, "the state directory")
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
        "--work-dir",
        type=Path,
        default=None,
        help="where contexts are cached and trials run (default: ~/.rung/worker, shared by "
        "this user's workers on the machine; worker-as-<uid> with --trial-user)",
    )
    worker.add_argument(
        "--keep-run-dirs",
        action="store_true",
        help="keep each trial process's run directory (its copy of the context, and what "
        "it wrote there) after it ends, for debugging; by default it is removed",
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
    worker.add_argument(
        "--trial-user",
        default=os.environ.get("RUNG_TRIAL_USER") or None,
        metavar="USER",
        help="run every training process as this user (a name or uid), which cannot read "
        "the worker's password file or /proc entries; the worker must run as root or with "
        "CAP_SETUID, CAP_SETGID and CAP_CHOWN (default: $RUNG_TRIAL_USER; none: trials run "
        "as the worker's user)",
    )
    worker.add_argument(
        "--trial-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass the worker's environment variable NAME on to trials, beside the "
        "built-in allowlist (repeatable; docs/security.md lists it); Rung's own secrets "
        "(RUNG_BROKER_URL, ...) are refused",
    )
    worker.add_argument(
        "--searcher-user",
        default=os.environ.get("RUNG_SEARCHER_USER") or None,
        metavar="USER",
        help="the searcher's broker user: the only one whose commands this worker runs "
        "(the broker vouches for every message's user); others are dead-lettered "
        "(default: $RUNG_SEARCHER_USER, else PREFIXsearcher beside a worker user "
        "PREFIXworker, guest beside guest, else rung-searcher)",
    )
    worker.add_argument(
        "--checkpoint-storage",
        type=Path,
        default=None,
        metavar="PATH",
        help="the checkpoint storage this worker sees (the host_path of the experiments' "
        "shared_fs checkpoint_storage, as mounted here): checkpoint deletion never "
        "reaches outside it (default: none; only the searcher's user may ask)",
    )
    worker.add_argument(
        "--address",
        type=_address,
        default=None,
        metavar="HOST",
        help="where other workers' processes reach this machine, when a trial runs on "
        "several workers and this one runs its chief's part (default: this machine's "
        "address on its route to the broker; 127.0.0.1 for a broker on this machine)",
    )
    _dir_group_option(worker, "the work directory")
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


def _address(value: str) -> str:
    """``--address``: an IP address or a host name, as the heartbeat carries it."""
    if not re.fullmatch(ADDRESS_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an address: give an IPv4 or IPv6 address or a host name "
            "(letters, digits, '.', ':', '-', '_', '%'), without a port"
        )
    return value


def _dir_group_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--dir-group",
        default=None,
        metavar="GROUP",
        help=f"make {what} readable by this group too (mode 2750, umask 027); by default "
        "it and everything the process creates is its user's only (0700, umask 077)",
    )


def _private_process(args: argparse.Namespace) -> int | None:
    """Files of this process for its user only (or its --dir-group), and its memory and
    /proc entries closed to other processes of its uid. Returns the group's id."""
    try:
        group = resolve_group(args.dir_group) if args.dir_group else None
    except PrivilegeError as exc:
        raise SystemExit(f"error: {exc}") from None
    private_umask(group)
    harden_process()
    return group


def _private_dir(path: Path, group: int | None) -> None:
    try:
        prepare_private_dir(path, group)
    except (PrivilegeError, OSError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None


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
    state_dir: Path = args.state_dir or default_state_dir()
    group = _private_process(args)
    _private_dir(state_dir, group)

    async def main() -> None:
        stop = stop_on_signals()
        broker = broker_from(args, "rung-searcher")
        await broker.start()
        try:
            service = SearcherService(
                broker,
                state_dir,
                worker_timeout_s=args.worker_timeout,
                shared_state_dir=args.shared_state_dir,
                verify_worker_users=args.verify_worker_users,
                admins=frozenset(args.admin),
                operators=frozenset(args.operator),
                workers=frozenset(args.worker_user),
                allow_custom_searchers=args.allow_custom_searchers,
                context_retention_s=args.context_retention,
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
            waiting = [s for s in await client.list_experiments() if s.waiting]
            Console().print(workers_view(workers, waiting))
        return 0

    return run_client(args, main)


def run_worker(args: argparse.Namespace) -> int:
    if args.action == "list":
        return list_workers(args)
    _require_broker(args)
    try:
        gpus = parse_gpus(args.gpus)
        trial_env = [check_allow_name(name) for name in args.trial_env]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    trial_user = _trial_user(args.trial_user)
    group = _private_process(args)

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
                work_dir=args.work_dir or default_work_dir(trial_user, group),
                heartbeat_s=args.heartbeat,
                hang_timeout_s=args.hang_timeout or None,
                start_method=args.start_method,
                health_file=args.health_file,
                trial_env_allow=trial_env,
                trial_user=trial_user,
                searcher_user=args.searcher_user,
                checkpoint_storage=args.checkpoint_storage,
                address=args.address,
                keep_run_dirs=args.keep_run_dirs,
            )
            if trial_user is None and hasattr(os, "geteuid") and os.geteuid() == 0:
                worker.log.warning(
                    "trials run as root, like this worker: their code can read every file "
                    "of the machine, the broker password's included; give an unprivileged "
                    "account with --trial-user USER"
                )
            _private_dir(worker.work_dir, group)
            await worker.run(stop)
        finally:
            await broker.close()

    asyncio.run(main())
    return 0


def _trial_user(spec: str | None) -> TrialUser | None:
    """``--trial-user``, checked before anything starts: the user exists and this worker
    may switch to it."""
    if not spec:
        return None
    try:
        user = resolve_trial_user(spec)
        check_can_switch(user)
    except PrivilegeError as exc:
        raise SystemExit(f"error: {exc}") from None
    return user
