"""``rung dashboard``: serve the web dashboard of a searcher, or of a state directory."""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

from rung.cli.common import add_broker_options, client_from, stop_on_signals
from rung.dashboard import ClientSource, Dashboard, DashboardError, DirSource
from rung.searcher.errors import SearcherError

__all__ = ["add_dashboard_options", "announce", "dashboard_key", "register"]


def add_dashboard_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    parser.add_argument(
        f"--{prefix}host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        f"--{prefix}port", type=int, default=8080, help="port (default 8080; 0: any free one)"
    )
    parser.add_argument(
        f"--{prefix}allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name browsers reach this machine by (repeatable); needed with --host "
        "0.0.0.0: the dashboard answers to no other name",
    )
    parser.add_argument(
        f"--{prefix}no-key",
        action="store_true",
        help="no access key: anyone who can reach the port (any user of this machine, "
        "with the default host) may open the pages and use the controls",
    )


def dashboard_key(args: argparse.Namespace, *, prefix: str = "") -> str | None:
    """A fresh access key, unless the options say none."""
    return None if getattr(args, f"{prefix}no_key") else secrets.token_urlsafe(18)


def announce(dashboard: Dashboard, *, stream: TextIO = sys.stdout) -> None:
    """Print the dashboard's address, with its access key."""
    address = dashboard.address
    if address is None:
        return
    url = address.url
    if dashboard.host in ("0.0.0.0", "::") and dashboard.allowed_hosts:  # noqa: S104
        # A wildcard is no address to open: the first name it answers to is.
        name = sorted(dashboard.allowed_hosts)[0]
        has_port = re.search(r":[0-9]+$", name) is not None  # [fd00::5] names no port
        url = f"http://{name}/" if has_port else f"http://{name}:{address.port}/"
    key = f"?key={dashboard.key}" if dashboard.key else ""
    print(f"dashboard: {url}{key}", file=stream, flush=True)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="serve a web dashboard of the experiments",
        description="Serve pages that show experiments as they run: learning curves, the "
        "rungs with the searcher's reasons, hyperparameters, workers and trials. From a "
        "searcher (--broker), or read-only from a state directory of logs (--state-dir).",
    )
    add_broker_options(parser)
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="read the event logs in this searcher state directory instead (read-only, "
        "no searcher needed)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="show no controls, and refuse them"
    )
    parser.add_argument(
        "--allow-custom-searchers",
        action="store_true",
        help="with --state-dir: rebuild custom search methods from the state directory's "
        "contexts, to show their rungs and reasons (this runs the experiment creators' "
        "code in the dashboard)",
    )
    add_dashboard_options(parser)
    parser.set_defaults(handler=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    if args.state_dir is None and not args.broker:
        raise SearcherError(
            "rung dashboard needs a searcher or logs: pass --broker amqp://USER@HOST:5672/ "
            "(or set RUNG_BROKER_URL), or --state-dir DIR for a searcher state directory"
        )
    if args.state_dir is not None and not (args.state_dir / "experiments").is_dir():
        raise SearcherError(
            f"--state-dir {args.state_dir}: no experiments/ directory there; pass the "
            "directory a searcher was started with (--state-dir of rung searcher or rung run)"
        )
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    try:
        if args.state_dir is not None:
            contexts = args.state_dir / "contexts"
            allow = bool(args.allow_custom_searchers) and contexts.is_dir()
            async with Dashboard(
                DirSource(args.state_dir),
                host=args.host,
                port=args.port,
                read_only=True,
                context_root=contexts if allow else None,
                allow_custom=allow,
                allowed_hosts=args.allow_host,
                key=dashboard_key(args),
            ) as dashboard:
                announce(dashboard)
                await stop.wait()
            return 0
        client = client_from(args)
        async with (
            client,
            Dashboard(
                ClientSource(client),
                host=args.host,
                port=args.port,
                read_only=args.read_only,
                allowed_hosts=args.allow_host,
                key=dashboard_key(args),
            ) as dashboard,
        ):
            announce(dashboard)
            await stop.wait()
    except DashboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
