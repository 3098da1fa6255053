"""``rung.Client.local()``'s cluster: it is up when ``start`` returns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rung.client._local import LocalCluster
from rung.worker.spawn import ForkServer, SpawnError
from tests.support import fork_server_site


async def test_start_returns_once_every_worker_takes_work(tmp_path: Path) -> None:
    """An experiment created then does not wait for the workers' fork servers."""
    cluster = LocalCluster(tmp_path / "state", workers=3)
    try:
        await cluster.start()
        assert len(cluster._agents) == 3
        for agent in cluster._agents:
            assert agent.ready.is_set()
            assert isinstance(agent.spawner, ForkServer)
            assert agent.spawner.pid is not None
    finally:
        await cluster.stop()


async def test_a_worker_that_cannot_start_fails_the_start_and_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = os.environ.get("PYTHONPATH")
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    cluster = LocalCluster(tmp_path / "state", workers=2)
    with pytest.raises(SpawnError, match="--start-method exec"):
        await cluster.start()
    assert cluster.stop_event.is_set()
    assert cluster._tasks == []  # stopped and awaited: the searcher too
    # Nothing holds the state directory: a cluster on it starts.
    if before is None:
        monkeypatch.delenv("PYTHONPATH")
    else:
        monkeypatch.setenv("PYTHONPATH", before)
    again = LocalCluster(tmp_path / "state", workers=1)
    try:
        await again.start()
    finally:
        await again.stop()
