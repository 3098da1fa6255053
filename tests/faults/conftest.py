"""Fault tests run a real cluster, as the end-to-end tests do; a module may override
``cluster`` to start the searcher with other options.

``baseline`` is the fault-free run of the shared scenario (``scenario.py``), once per
session: the checker compares every faulty run's best trial with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import baseline_of, finish, start_experiment


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as instance:
        yield instance


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    tmp_path = tmp_path_factory.mktemp("baseline")
    with running_cluster(tmp_path) as instance:
        instance.start_worker("w1", 3)
        experiment_id = start_experiment(instance, tmp_path)
        report = finish(instance, experiment_id, None, bound_s=120)
    assert report.summary["state"] == "COMPLETED"
    assert report.restarts == 0
    return baseline_of(report)
