"""Fault tests run a real cluster, as the end-to-end tests do; a module may override
``cluster`` to start the searcher with other options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as instance:
        yield instance
