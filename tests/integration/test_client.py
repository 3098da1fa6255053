"""``rung.Client`` against a real searcher and real workers: in separate processes on the
local RabbitMQ, and embedded in this process (``Client.local()``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import rung
from rung.broker.port import Delivery
from rung.searcher.eventlog import InputRecord, read_log
from rung.searcher.eventlog.records import record_adapter
from tests.e2e.conftest import EXAMPLES, Cluster, running_cluster
from tests.support import AMQP_URL

ASHA: dict[str, Any] = {
    "name": "client-asha",
    "labels": ["client-test"],
    "entrypoint": "python3 3_hpsearch.py",
    "hyperparameters": {
        "increment_by": {"type": "int", "minval": 1, "maxval": 9},
        "batch_sleep": 0.01,
    },
    "searcher": {
        "name": "asha",
        "metric": "x",
        "max_length": 40,
        "max_trials": 4,
        "num_rungs": 2,
        "divisor": 2,
        "max_concurrent_trials": 2,
    },
}


def _slow(**searcher: Any) -> dict[str, Any]:
    """ASHA with trials long enough to act on while they run."""
    config = {**ASHA, "hyperparameters": {**ASHA["hyperparameters"], "batch_sleep": 0.05}}
    return {**config, "searcher": {**ASHA["searcher"], "max_length": 200, **searcher}}


@contextlib.contextmanager
def _cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as cluster:
        cluster.start_worker("w1", 1)
        cluster.start_worker("w2", 1)
        yield cluster


@pytest.fixture(params=["local", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[rung.Client]:
    if request.param == "local":
        async with rung.Client.local(tmp_path / "state", workers=2) as local:
            yield local
        # Whatever the embedded workers left open shows up now, in this test.
        gc.collect()
        return
    with _cluster(tmp_path) as cluster:
        async with rung.Client(AMQP_URL, namespace=cluster.namespace) as remote:
            yield remote


async def _events(experiment: rung.Experiment) -> list[rung.Event]:
    return [event async for event in experiment.watch()]


async def test_the_full_lifecycle(client: rung.Client) -> None:
    experiment = await client.create_experiment(ASHA, EXAMPLES)
    events = await _events(experiment)
    # The whole log, exactly once and in order, ending with the experiment's end.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert await experiment.wait(timeout=60) == "COMPLETED"
    summary = await experiment.describe()
    assert summary.state == "COMPLETED"
    assert summary.labels == ["client-test"]
    logged = read_log(Path(summary.event_log))
    assert [r.seq for r in logged] == [e.seq for e in events]
    trials = await experiment.trials()
    assert len(trials) == 4
    best = await experiment.best_trial()
    assert best is not None
    finished = [t for t in trials if t.length == 40]
    assert best.metric == min(t.metric for t in finished if t.metric is not None)

    checkpoints = await experiment.checkpoints()
    assert {c.uuid for c in checkpoints} >= {t.latest_checkpoint for t in trials}
    assert all(c.experiment_id == experiment.id for c in checkpoints)
    metrics = await experiment.trial(best.trial_id).metrics()
    assert {m.group for m in metrics} == {"training", "validation"}
    assert metrics[-1].metrics["x"] == best.metric
    logs = [line async for line in experiment.trial(best.trial_id).logs()]
    assert any("best validation so far" in line.text for line in logs)
    assert {line.trial_id for line in logs} == {best.trial_id}

    listed = await client.list_experiments(state="COMPLETED", label="client-test")
    assert experiment.id in [e.experiment_id for e in listed]
    assert await client.list_experiments(label="no-such-label") == []
    assert (await client.get_experiment(experiment.id)).id == experiment.id
    with pytest.raises(rung.NotFoundError, match="no experiment"):
        await client.get_experiment("exp-nope")
    with pytest.raises(rung.NotFoundError, match="no trial 99"):
        await experiment.trial(99).describe()
    workers = await client.list_workers()
    assert len(workers) == 2
    assert all(w.slots == 1 and w.last_seen_s < 30 for w in workers)


async def test_a_bad_config_comes_back_as_typed_validation_errors(
    client: rung.Client, tmp_path: Path
) -> None:
    bad = {**ASHA, "searcher": {**ASHA["searcher"], "max_trials": 0, "divisor": "two"}}
    with pytest.raises(rung.RefusedError) as refused:
        await client.create_experiment(bad, EXAMPLES)
    paths = {p.path for p in refused.value.problems}
    assert {"searcher.max_trials", "searcher.divisor"} <= paths
    # From a file, the client checks it before sending anything: the same error type.
    path = tmp_path / "bad.yaml"
    path.write_text("entrypoint: python3 3_hpsearch.py\nsearcher: {name: asha}\n")
    with pytest.raises(rung.RefusedError) as local:
        await client.create_experiment(path, EXAMPLES)
    assert any(p.path.startswith("searcher") for p in local.value.problems)
    assert isinstance(local.value, rung.ClientError)


async def test_pause_and_activate_in_the_middle_of_asha(client: rung.Client) -> None:
    experiment = await client.create_experiment(_slow(), EXAMPLES)
    async for event in experiment.watch():
        body = event.input if isinstance(event, InputRecord) else None
        if body is not None and body.type == "checkpoint_saved":
            break
    assert await experiment.pause() == "PAUSED"

    async def nothing_runs() -> bool:
        return all(t.state != "RUNNING" for t in await experiment.trials())

    await _until(nothing_runs, 60, "the trials to checkpoint and stop")
    paused = await experiment.trials()
    assert any(t.latest_checkpoint for t in paused)
    assert await experiment.activate() == "ACTIVE"
    assert await experiment.wait(timeout=120) == "COMPLETED"
    restarts = [t.restarts for t in await experiment.trials()]
    assert restarts == [0] * len(restarts)  # a pause is not a failure


async def test_kill_a_trial_then_the_experiment(client: rung.Client) -> None:
    experiment = await client.create_experiment(_slow(max_trials=6), EXAMPLES)

    async def running() -> list[rung.TrialSummary]:
        return [t for t in await experiment.trials() if t.state == "RUNNING"]

    await _until(lambda: _nonempty(running()), 60, "a running trial")
    victim = (await running())[0]
    assert await experiment.trial(victim.trial_id).kill() == "CANCELED"
    assert (await experiment.trial(victim.trial_id).describe()).state == "CANCELED"
    assert (await experiment.describe()).state == "ACTIVE"  # the search goes on
    assert await experiment.kill() == "CANCELED"
    assert await experiment.wait(timeout=30) == "CANCELED"
    assert {t.state for t in await experiment.trials()} <= {"CANCELED", "COMPLETED"}


async def test_two_clients_watch_one_experiment(client: rung.Client) -> None:
    experiment = await client.create_experiment(ASHA, EXAMPLES)
    if client.url is None:  # local: a second watcher on the same embedded searcher
        other = client.experiment(experiment.id)
        first, second = await asyncio.gather(_events(experiment), _events(other))
    else:
        async with rung.Client(client.url, namespace=client.namespace) as second_client:
            other = await second_client.get_experiment(experiment.id)
            first, second = await asyncio.gather(_events(experiment), _events(other))
    assert [e.seq for e in first] == [e.seq for e in second]
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]


async def test_wait_wakes_up_on_the_end_notice_and_only_believes_the_searcher(
    client: rung.Client,
) -> None:
    """Issue 18: ``wait()`` returns when the live feed says the experiment ended, not at
    its next poll (an hour here). A notice that lies (anyone who may publish to the feed
    can send one) only makes it ask the searcher again; record watchers never see one."""
    rpc = client.rpc
    experiment = await client.create_experiment(_slow(max_trials=6), EXAMPLES)
    bodies: list[bytes] = []

    async def on_record(delivery: Delivery) -> None:
        bodies.append(delivery.body)

    records = await rpc.follow_feed(experiment.id, on_record)
    assert records is not None
    states: list[str] = []
    fooled = asyncio.create_task(
        rpc.wait(experiment.id, poll_s=3600, on_update=lambda s: states.append(s.state))
    )
    try:
        await _until(lambda: _true(len(states) == 1), 60, "the first describe")
        topology = client.broker.topology
        forged = b'{"kind": "ended", "state": "COMPLETED"}'
        await client.broker.publish(
            topology.feed_exchange, topology.ended_key(experiment.id), forged, message_id="f"
        )
        await _until(lambda: _true(len(states) == 2), 60, "a describe after the forged notice")
        assert states == ["ACTIVE", "ACTIVE"]
        assert not fooled.done()
    finally:
        fooled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fooled
    waiting = asyncio.create_task(
        rpc.wait(experiment.id, poll_s=3600, on_update=lambda s: states.append(s.state))
    )
    try:
        await _until(lambda: _true(len(states) == 3), 60, "the second waiter's first describe")
        assert await experiment.kill() == "CANCELED"
        assert (await asyncio.wait_for(waiting, 60)).state == "CANCELED"
    finally:
        waiting.cancel()
        await rpc.unfollow_feed(records)
    assert bodies  # the records of the run went by on the feed...
    assert all(record_adapter.validate_json(body).seq >= 1 for body in bodies)  # ...only them
    # Once it has ended, a wait answers at once.
    assert await asyncio.wait_for(experiment.wait(poll_s=3600), 60) == "CANCELED"


PREEMPTIBLE = """\
import time

import rung as det

with det.core.init() as core_context:
    for op in core_context.searcher.operations():
        while not core_context.preempt.should_preempt():
            time.sleep(0.02)
        break
"""


async def test_an_end_that_sends_no_command_wakes_wait_too(
    client: rung.Client, tmp_path: Path
) -> None:
    """Issue 18 (a review): killing a paused experiment with nothing running and no
    checkpoint to delete causes no command; its record is made durable before the kill
    is answered all the same, so the feed publishes it and the end notice at once."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "train.py").write_text(PREEMPTIBLE)
    config = {
        "entrypoint": "python3 train.py",
        "searcher": {"name": "single", "metric": "x", "max_length": 10},
    }
    experiment = await client.create_experiment(config, context)

    async def trial_state(state: str) -> bool:
        return [t.state for t in await experiment.trials()] == [state]

    async def exited() -> bool:
        records, _, _ = await client.rpc.read_records(experiment.id, after_seq=0)
        return any(
            isinstance(r, InputRecord) and r.input is not None and r.input.type == "trial_exited"
            for r in records
        )

    await _until(lambda: trial_state("RUNNING"), 60, "the trial to run")
    assert await experiment.pause() == "PAUSED"
    await _until(exited, 60, "the trial's process to exit")
    assert await trial_state("PAUSED")
    states: list[str] = []
    waiting = asyncio.create_task(
        client.rpc.wait(experiment.id, poll_s=3600, on_update=lambda s: states.append(s.state))
    )
    try:
        await _until(lambda: _true(len(states) == 1), 60, "the waiter's first describe")
        assert states == ["PAUSED"]
        assert await experiment.kill() == "CANCELED"
        assert (await asyncio.wait_for(waiting, 60)).state == "CANCELED"
    finally:
        waiting.cancel()
    assert await client.experiment(experiment.id).checkpoints() == []


async def _true(value: bool) -> bool:
    return value


@pytest.mark.rabbitmq
async def test_watch_goes_on_across_a_forced_disconnect(tmp_path: Path) -> None:
    with _cluster(tmp_path) as cluster:
        async with rung.Client(AMQP_URL, namespace=cluster.namespace) as client:
            experiment = await client.create_experiment(_slow(max_length=60), EXAMPLES)
            seen: list[int] = []
            dropped = False
            async for event in experiment.watch(poll_s=0.5):
                seen.append(event.seq)
                if not dropped and len(seen) >= 10:
                    dropped = True
                    done = await asyncio.to_thread(
                        subprocess.run,
                        ["rabbitmqctl", "close_all_connections", "client test"],
                        capture_output=True,
                        check=False,
                    )
                    assert done.returncode == 0
            assert dropped
            summary = await experiment.describe()
    assert summary.state == "COMPLETED"
    logged = [r.seq for r in read_log(Path(summary.event_log))]
    assert seen == logged  # no gap, no duplicate


def test_the_sync_facade(tmp_path: Path) -> None:
    config = {
        "entrypoint": "python3 3_hpsearch.py",
        "hyperparameters": {"increment_by": 3},
        "searcher": {"name": "single", "metric": "x", "max_length": 10},
    }
    with rung.SyncClient.local(tmp_path / "state") as client:
        experiment = client.create_experiment(config, EXAMPLES)
        assert experiment.wait(timeout=60) == "COMPLETED"
        best = experiment.best_trial()
        assert best.metric == 30
        events = list(experiment.watch())
        assert events[-1].seq == len(events)
        lines = list(experiment.trial(best.trial_id).logs())
        assert lines
        with pytest.raises(rung.NotFoundError):
            client.get_experiment("exp-nope")


async def _nonempty(values: Any) -> bool:
    return bool(await values)


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)
