"""Options and helpers shared by the commands that talk to a broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

from rung.broker import Broker, TlsSettings, Topology, connect_broker
from rung.client import Client, ClientError

__all__ = [
    "add_broker_options",
    "broker_from",
    "broker_url",
    "client_from",
    "default_state_dir",
    "parse_duration",
    "redact",
    "run_client",
    "stop_on_signals",
    "tls_from",
]


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


class _BrokerOption(argparse.Action):
    """``--broker URL``, remembering that the URL came on the command line (where any user
    of the machine reads it: ``ps``, ``/proc/PID/cmdline``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.broker_on_command_line = True


def add_broker_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--broker",
        action=_BrokerOption,
        default=os.environ.get("RUNG_BROKER_URL"),
        required=False,
        help="amqp://user@host:5672/vhost, the password in --broker-password-file (a "
        "password in the URL works, but any local user can read a command line) "
        "(default: $RUNG_BROKER_URL" + (")" if required else "; none means the in-process broker)"),
    )
    parser.add_argument(
        "--broker-password-file",
        type=Path,
        default=_env_path("RUNG_BROKER_PASSWORD_FILE"),
        metavar="PATH",
        help="read the broker password from this file (a mounted secret) instead of the "
        "URL, which then names only the user (default: $RUNG_BROKER_PASSWORD_FILE)",
    )
    tls = parser.add_argument_group("TLS, for an amqps:// broker URL (checks are always on)")
    tls.add_argument(
        "--tls-ca",
        type=Path,
        default=_env_path("RUNG_TLS_CA"),
        help="CA bundle (PEM) the broker's certificate must chain to "
        "(default: $RUNG_TLS_CA, else the system's trust store)",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        default=_env_path("RUNG_TLS_CERT"),
        help="client certificate (PEM), for brokers that require one (default: $RUNG_TLS_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        default=_env_path("RUNG_TLS_KEY"),
        help="the client certificate's private key (PEM) (default: $RUNG_TLS_KEY)",
    )
    tls.add_argument(
        "--tls-insecure-skip-verify",
        action="store_true",
        help="connect without checking the broker's certificate: encrypted but not "
        "authenticated; for a throwaway test broker only",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait to reach the broker, and for each answer of the searcher "
        "(default 30); past it the command exits with code 3",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("RUNG_NAMESPACE", "rung"),
        help="prefix of every queue and exchange (default: rung)",
    )


def tls_from(args: argparse.Namespace) -> TlsSettings:
    return TlsSettings(
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        insecure_skip_verify=args.tls_insecure_skip_verify,
    )


def _warn_password_on_command_line(args: argparse.Namespace, url: str) -> None:
    """Once per command: a password given in ``--broker`` on the command line."""
    if not getattr(args, "broker_on_command_line", False):
        return
    if getattr(args, "broker_password_warned", False) or urlsplit(url).password is None:
        return
    args.broker_password_warned = True
    structlog.get_logger("rung.cli").warning(
        "the --broker URL on the command line carries a password: any user of this "
        "machine can read it (ps, /proc/PID/cmdline). Give the URL without it "
        "(amqp://USER@HOST:PORT/VHOST) and the password in a file readable by this user "
        "only: --broker-password-file PATH or RUNG_BROKER_PASSWORD_FILE",
        broker=redact(url),
    )


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def broker_url(args: argparse.Namespace) -> str | None:
    """``--broker``, with the password of ``--broker-password-file`` put in."""
    url: str | None = args.broker
    path: Path | None = getattr(args, "broker_password_file", None)
    if url is not None:
        _warn_password_on_command_line(args, url)
    if url is None or path is None:
        return url
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise SystemExit(
            f"error: --broker-password-file {path}: cannot read it ({exc.strerror}); give "
            "the file a secret is mounted at, readable by this user"
        ) from None
    parts = urlsplit(url)
    if parts.username is None:
        raise SystemExit(
            f"error: --broker-password-file needs a user in the broker URL "
            f"({parts.scheme}://USER@HOST:PORT/VHOST)"
        )
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def broker_from(args: argparse.Namespace, name: str, *, namespace: str | None = None) -> Broker:
    topology = Topology(namespace or args.namespace)
    return connect_broker(broker_url(args), topology, name=name, tls=tls_from(args))


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process stops intake, drains, then exits.

    SIGUSR1 logs what every task of the process is waiting on, and carries on: for a
    service that seems stuck (``kill -USR1 PID``, then read its log).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGUSR1, log_tasks)
    return stop


def log_tasks() -> None:
    """Log each task of the running loop with the stack of coroutines it waits in."""
    tasks = asyncio.all_tasks()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        structlog.get_logger("rung").warning(
            "task dump (SIGUSR1)", task=task.get_name(), stack=stack.getvalue()
        )


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or a number with a unit s, m, h, d or w
    (``7d``, ``12h``, ``90s``). For argparse's ``type=``."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds, or a number and a unit s, m, h, d "
            "or w (7d, 12h)"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is finite and not negative")
    return seconds


def default_state_dir() -> Path:
    return Path(os.environ.get("RUNG_STATE_DIR", Path.home() / ".rung" / "searcher"))


def run_client(args: argparse.Namespace, main: Callable[[Client], Awaitable[int]]) -> int:
    """Connect a ``rung.Client`` as the broker options say, run ``main`` with it, close."""
    if not args.broker:
        raise ClientError(
            "no broker URL: pass --broker amqp://USER@HOST:5672/ with "
            "--broker-password-file PATH, or set RUNG_BROKER_URL and "
            "RUNG_BROKER_PASSWORD_FILE (the searcher's broker)"
        )

    async def go() -> int:
        async with client_from(args) as client:
            return await main(client)

    return asyncio.run(go())


def client_from(args: argparse.Namespace) -> Client:
    """A ``rung.Client`` of the searcher the broker options name (not yet connected)."""
    return Client(
        broker_url(args) or args.broker,
        namespace=args.namespace,
        tls=tls_from(args),
        timeout=args.timeout,
        connect_timeout=args.timeout,
    )
