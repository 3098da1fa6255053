"""structlog set-up: console output for people, JSON lines for machines.

An exception logged with ``log.exception`` (or ``exc_info=True``) keeps its type, message
and traceback in both formats: in JSON as an ``exception`` list of ``{"exc_type",
"exc_value", "frames"}`` (the chain, outermost last) plus flat ``exc_type`` and
``exc_value`` of the last one, so that a log search finds them. Local variables are never
rendered: they can hold message bodies and credentials.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["LogFormat", "configure_logging"]

LogFormat = Literal["console", "json"]

_EXCEPTIONS_AS_DICTS = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False, use_rich=False)
)


def _flat_exception(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``exc_type`` and ``exc_value`` of the exception that was raised last, beside the
    full ``exception`` chain."""
    chain = event.get("exception")
    if isinstance(chain, list) and chain and isinstance(chain[-1], dict):
        last = chain[-1]
        event.setdefault("exc_type", last.get("exc_type"))
        event.setdefault("exc_value", last.get("exc_value"))
    return event


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    formatter: structlog.typing.ExceptionRenderer
    try:
        import rich  # noqa: F401, PLC0415 (optional: the plain formatter without it)
    except ImportError:  # pragma: no cover (rich is a dependency)
        formatter = structlog.dev.plain_traceback
    else:
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=formatter)


def configure_logging(fmt: LogFormat = "console", level: str = "info") -> None:
    """Send structured logs to stderr, rendered for people or as JSON lines."""
    renderer: structlog.types.Processor
    tracebacks: list[structlog.types.Processor] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
        tracebacks = [_EXCEPTIONS_AS_DICTS, _flat_exception]
    else:
        renderer = _console_renderer()
    # Libraries that log through the standard library (aio-pika) come out the same way.
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tracebacks,
            renderer,
        ],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
