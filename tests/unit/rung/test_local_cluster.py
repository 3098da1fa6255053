"""``rung.Client.local()``'s cluster: it is up when ``start`` returns."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rung.client._local import LocalCluster
from rung.worker.spawn import ForkServer, SpawnError
from tests.support import fork_server_site, gated_fork_servers, wait_for


def _servers(cluster: LocalCluster) -> list[ForkServer]:
    servers = [agent.spawner for agent in cluster._agents]
    assert all(isinstance(server, ForkServer) for server in servers)
    return servers  # type: ignore[return-value]


async def test_start_returns_once_every_worker_takes_work(tmp_path: Path) -> None:
    """An experiment created then does not wait for the workers' fork servers."""
    cluster = LocalCluster(tmp_path / "state", workers=3)
    try:
        await cluster.start()
        assert len(cluster._agents) == 3
        assert all(agent.ready.is_set() for agent in cluster._agents)
        assert all(server.pid is not None for server in _servers(cluster))
    finally:
        await cluster.stop()


def _restore(monkeypatch: pytest.MonkeyPatch, before: str | None) -> None:
    if before is None:
        monkeypatch.delenv("PYTHONPATH")
    else:
        monkeypatch.setenv("PYTHONPATH", before)


async def test_a_worker_that_cannot_start_fails_the_start_and_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fork server to start dies; the other worker's starts, and is stopped
    with everything else."""
    before = os.environ.get("PYTHONPATH")
    first = tmp_path / "first"
    fork_server_site(
        tmp_path,
        monkeypatch,
        f"""
        import os
        try:
            os.close(os.open({str(first)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os._exit(3)
        """,
    )
    cluster = LocalCluster(tmp_path / "state", workers=2)
    with pytest.raises(SpawnError, match="--start-method exec"):
        await cluster.start()
    assert cluster.stop_event.is_set()
    assert cluster._tasks == []  # stopped and awaited: the searcher too
    assert all(server.pid is None for server in _servers(cluster))
    # Nothing holds the state directory: a cluster on it starts.
    _restore(monkeypatch, before)
    again = LocalCluster(tmp_path / "state", workers=1)
    try:
        await again.start()
    finally:
        await again.stop()


async def test_a_start_cancelled_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody holds the cluster of a start that was cancelled (a timeout around the
    client's connect, Ctrl-C): it stops itself."""
    gate, waiting = gated_fork_servers(tmp_path, monkeypatch)
    cluster = LocalCluster(tmp_path / "state", workers=2)
    try:
        starting = asyncio.create_task(cluster.start())
        await wait_for(waiting.exists, 30, "a fork server at its gate")
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(starting, 30)  # the gate is still shut
        assert cluster.stop_event.is_set()
        assert cluster._tasks == []
        assert all(server.pid is None for server in _servers(cluster))
    finally:
        gate.touch()


async def test_a_cluster_of_the_exec_start_method_needs_no_fork_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way round a fork server that cannot start, as the error says."""
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    cluster = LocalCluster(tmp_path / "state", workers=2, start_method="exec")
    try:
        await cluster.start()
        assert all(agent.ready.is_set() for agent in cluster._agents)
        assert not any(isinstance(agent.spawner, ForkServer) for agent in cluster._agents)
    finally:
        await cluster.stop()


def test_a_start_method_it_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"start_method 'Exec' is not one of fork-server, exec"):
        LocalCluster(tmp_path / "state", start_method="Exec")  # type: ignore[arg-type]
