"""Options and helpers shared by the commands that talk to a broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from broker import Broker, Topology, connect_broker

__all__ = ["add_broker_options", "broker_from", "default_state_dir", "stop_on_signals"]


def add_broker_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--broker",
        default=os.environ.get("RUNG_BROKER_URL"),
        required=False,
        help="amqp://user:password@host:5672/vhost (default: $RUNG_BROKER_URL"
        + (")" if required else "; none means the in-process broker)"),
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("RUNG_NAMESPACE", "rung"),
        help="prefix of every queue and exchange (default: rung)",
    )


def broker_from(args: argparse.Namespace, name: str, *, namespace: str | None = None) -> Broker:
    return connect_broker(args.broker, Topology(namespace or args.namespace), name=name)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process stops intake, drains, then exits."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def default_state_dir() -> Path:
    return Path(os.environ.get("RUNG_STATE_DIR", Path.home() / ".rung" / "searcher"))
