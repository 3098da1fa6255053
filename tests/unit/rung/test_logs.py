"""JSON logs keep what an exception was; no format renders local variables."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from rung.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging binds the (captured) stderr of the test: put back the standard
    library's root logger (structlog's configuration: tests/conftest.py)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _last_json(err: str) -> dict[str, object]:
    lines = [line for line in err.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1])
    assert isinstance(record, dict)
    return record


SECRET = "-".join(["S3cr3t", "local", "value"])  # built at run time: not in a source line


def _raise_with_secret_local() -> None:
    body = SECRET  # noqa: F841 (a local that must never be logged)
    raise OSError(36, "File name too long")


def _raise_recursion() -> None:
    raise RecursionError("maximum recursion depth exceeded")


def test_json_logs_carry_type_message_and_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    try:
        _raise_with_secret_local()
    except OSError:
        structlog.get_logger("rung.test").exception("handler failed", queue="rung.rpc")
    err = capsys.readouterr().err
    record = _last_json(err)
    assert record["event"] == "handler failed"
    assert record["exc_type"] == "OSError"
    assert "File name too long" in str(record["exc_value"])
    chain = record["exception"]
    assert isinstance(chain, list)
    frames = chain[-1]["frames"]
    assert any(f["name"] == "_raise_with_secret_local" for f in frames)
    assert SECRET not in err
    assert "exc_info" not in record


def test_json_logs_of_standard_library_loggers_carry_the_exception(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json")
    try:
        _raise_recursion()
    except RecursionError:
        logging.getLogger("aio_pika.test").exception("consumer failed")
    record = _last_json(capsys.readouterr().err)
    assert record["exc_type"] == "RecursionError"
    assert record["event"] == "consumer failed"


def test_console_logs_show_the_traceback_without_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("console")
    try:
        _raise_with_secret_local()
    except OSError:
        structlog.get_logger("rung.test").exception("handler failed")
    err = capsys.readouterr().err
    assert "OSError" in err
    assert "File name too long" in err
    assert SECRET not in err
