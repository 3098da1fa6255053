"""Hostile scheduling: an experiment whose trials need more slots than any worker has
never stops a worker taking work that fits (issue 16: head-of-line blocking left a normal
experiment QUEUED beside a free slot). The large trial waits, and says why, until a worker
large enough joins; a run_trial routed past its bucket is dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import rung
from rung.broker import RabbitBroker, Topology
from rung.broker.port import Delivery
from rung.broker.schemas import Envelope, RunTrial, encode
from rung.broker.topology import MAX_SLOTS_PER_TRIAL
from rung.searcher.config import parse_config
from rung.searcher.errors import ConfigError
from rung.worker.agent import Worker
from tests.e2e.conftest import EXAMPLES, Cluster, running_cluster
from tests.hostile.conftest import HostileTally
from tests.support import AMQP_URL, wait_for, wait_for_async

pytestmark = pytest.mark.rabbitmq


def config(name: str, slots: int) -> dict[str, Any]:
    # A trial of several slots runs a process per slot (a single process is refused:
    # Determined's rule), through Rung's launcher.
    entrypoint = (
        "python3 1_metrics.py"
        if slots == 1
        else "python3 -m rung.launch.torch_distributed -- python3 4_distributed_torchrun.py"
    )
    return {
        "name": name,
        "entrypoint": entrypoint,
        "searcher": {"name": "single", "metric": "x", "max_length": 1},
        "max_restarts": 0,
        "resources": {"slots_per_trial": slots},
    }


@contextlib.asynccontextmanager
async def in_process_worker(cluster: Cluster, slots: int, work_dir: Path) -> AsyncIterator[Worker]:
    """A worker agent with ``slots`` CPU slots, in this process, on the cluster's broker."""
    broker = RabbitBroker(AMQP_URL, Topology(cluster.namespace), name="big-worker")
    await broker.start()
    worker = Worker(
        broker, worker_id=f"big-{slots}", slots=slots, work_dir=work_dir, heartbeat_s=0.5
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 90)
        await broker.close()


async def waiting_of(experiment: rung.Experiment) -> list[str]:
    return list((await experiment.describe()).waiting)


async def test_a_trial_no_worker_can_fit_waits_with_a_reason_and_blocks_nothing(
    tmp_path: Path, hostile: HostileTally
) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.start_worker("small", 1)
        async with rung.Client(AMQP_URL, namespace=cluster.namespace) as client:
            started = time.monotonic()
            # The large one first: under the old single work queue it stopped the worker.
            big = await client.create_experiment(config("big", 2), EXAMPLES)
            normal = await client.create_experiment(config("normal", 1), EXAMPLES)
            assert await normal.wait(timeout=90) == "COMPLETED"

            # The large one waits, active, with its reason in describe.
            async def reason_shown() -> bool:
                return any(
                    "needs 2 slots; the largest worker has 1 (1 worker)" in reason
                    for reason in await waiting_of(big)
                )

            await wait_for_async(reason_shown, 30, "the waiting reason")
            summary = await big.describe()
            assert summary.state == "ACTIVE"
            assert [t.state for t in summary.trials] == ["QUEUED"]
            described = cluster.rung("experiment", "describe", big.id)
            assert described.returncode == 0, described.stderr
            assert "waiting: trial 1 needs 2 slots" in " ".join(described.stdout.split())
            # And rung worker list shows, under its table, what no worker can fit.
            listed = cluster.rung("worker", "list")
            assert listed.returncode == 0, listed.stderr
            shown = " ".join(listed.stdout.split())
            assert "trials no worker can fit:" in shown
            assert f"{big.id} (big): trial 1 needs 2 slots" in shown
            hostile.record(
                "scheduling",
                "slots_per_trial 2 above every worker's 1, beside a 1-slot experiment",
                "contained",
                time.monotonic() - started,
            )

            # A worker large enough joins: the large trial runs, and the reason is gone.
            async with in_process_worker(cluster, 2, tmp_path / "big-worker"):
                assert await big.wait(timeout=90) == "COMPLETED"
                assert await waiting_of(big) == []


async def test_a_run_trial_routed_past_its_bucket_is_dead_lettered(
    tmp_path: Path, hostile: HostileTally
) -> None:
    """A forged (or misrouted) run_trial for far more slots than its queue's bucket goes
    to the dead queue with its reason; the worker goes on taking work that fits."""
    with running_cluster(tmp_path) as cluster:
        cluster.start_worker("small", 1)
        broker = RabbitBroker(AMQP_URL, Topology(cluster.namespace), name="forger")
        await broker.start()
        try:
            t = broker.topology
            dead: list[Delivery] = []

            async def on_dead(delivery: Delivery) -> None:
                dead.append(delivery)
                await delivery.ack()

            await broker.subscribe(t.dead_queue, on_dead, prefetch=10)
            forged = RunTrial(
                experiment_id="forged",
                trial_id=1,
                request_id="r1",
                attempt=1,
                length=1,
                hparams={},
                trial_seed=0,
                context_hash="0" * 64,
                entrypoint=["sh", "-c", "echo pwned"],
                slots=1_000_000,
                checkpoint_root="checkpoints",
                max_restarts=0,
            )
            envelope = Envelope(message_id="forged-1", experiment_id="forged", body=forged)
            started = time.monotonic()
            await broker.publish(
                t.commands_exchange, t.WORK_KEY, encode(envelope), message_id="forged-1"
            )
            await wait_for(lambda: any(d.message_id == "forged-1" for d in dead), 30, "the letter")
            seconds = time.monotonic() - started
            letter = next(d for d in dead if d.message_id == "forged-1")
            # Rejected by the worker, dead-lettered by the broker from the work queue; the
            # reason is in the worker's log (a worker never writes the dead exchange).
            (death, *_) = letter.headers["x-death"]
            assert death["queue"] == t.work_queue
            assert death["reason"] == "rejected"
            assert "needs 1000000 slots" in cluster.log_text("small")
            async with rung.Client(AMQP_URL, namespace=cluster.namespace) as client:
                normal = await client.create_experiment(config("normal", 1), EXAMPLES)
                assert await normal.wait(timeout=90) == "COMPLETED"
            hostile.record(
                "scheduling", "run_trial of 10^6 slots on 'work'", "dead-lettered", seconds
            )
        finally:
            await broker.close()


@pytest.mark.parametrize("slots", [MAX_SLOTS_PER_TRIAL + 1, 10**9])
def test_slots_per_trial_above_the_largest_bucket_is_refused_at_create(
    slots: int, hostile: HostileTally
) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        parse_config(config("huge", slots))
    assert f"at most {MAX_SLOTS_PER_TRIAL}" in str(refused.value)
    assert f"got {slots}" in str(refused.value)
    assert parse_config(config("largest", MAX_SLOTS_PER_TRIAL)).config.resources.slots_per_trial
    hostile.record("scheduling", f"slots_per_trial {slots}", "refused", time.monotonic() - started)
