"""``rung``: the entry point, global options and error handling.

User errors (a bad config, an unknown benchmark, a custom searcher that fails to load)
print one clear message per problem, without a traceback, and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import structlog

from rung.broker import BrokerSettingsError
from rung.cli import (
    dashboard,
    definitions,
    dlq,
    experiments,
    replay,
    run,
    search_tools,
    services,
    trials,
)
from rung.logs import configure_logging
from rung.searcher.errors import ConnectionLostError, RequestTimeoutError, SearcherError
from rung.worker.spawn import SpawnError

__all__ = ["main"]

# Documented in docs/cli.md: 0 ok, 1 the experiment failed, 2 bad input, 3 not reachable.
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rung", description="Distributed hyperparameter search for deep learning."
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="logs on stderr: for people (console) or JSON lines",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    search_tools.register(commands)
    run.register(commands)
    experiments.register(commands)
    trials.register(commands)
    services.register(commands)
    replay.register(commands)
    dlq.register(commands)
    definitions.register(commands)
    dashboard.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        result: int = args.handler(args)
    except BrokenPipeError:
        # The reader went away (``rung replay LOG | head``): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConnectionLostError, RequestTimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (SearcherError, BrokerSettingsError) as exc:
        structlog.get_logger("rung.cli").debug("command failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SpawnError as exc:  # a worker (`rung worker`, `rung run`'s) could not start
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result
