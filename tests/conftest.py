"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.proxy import FaultProxy

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)

settings.register_profile(
    "stress", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("RUNG_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        type=int,
        default=0,
        metavar="FAULTS",
        help="run tests/faults/test_soak.py with this many random faults (100+ for a real soak)",
    )
    parser.addoption(
        "--soak-seed",
        type=int,
        default=None,
        help="seed of the soak's fault schedule (default: random, printed)",
    )


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A TCP proxy in front of the local RabbitMQ that can reset, delay or cut links."""
    instance = FaultProxy().start()
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    """Each test leaves structlog's configuration as it found it, "not configured"
    included: ``structlog.testing.capture_logs`` and ``configure_logging`` configure it,
    and ``Client.local`` sets up warnings on stderr only where nothing has (a later test
    would otherwise find a local cluster's info lines in its stdout)."""
    configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
