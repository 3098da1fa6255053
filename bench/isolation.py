"""Isolation: one experiment's blocked publishes cost the others nothing (issue 15).

A searcher runs in this process with two one-trial experiments, A and B. Every command
of A's is made to block for 1 s and then fail, as a broker under a resource alarm
would (a TCP proxy could only block the searcher's whole connection, so the block is
put on A's publishes). Measured, from an event's publish to its record being durable
(the searcher acknowledges it right after):

* B's inputs without commands, before and while A's publishes block;
* the five-input probe of issue 15: five inputs of A without commands once A's decision
  waits for the broker (on 987ddd5 they took 5.0 s, one blocked publish each).

``python -m bench.isolation [--rabbitmq]``, or as the ``isolation`` workload of
``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rung.broker import Broker, MemoryBroker, RabbitBroker, Topology
from rung.broker.errors import PublishTimeoutError
from rung.broker.port import Delivery
from rung.broker.schemas import (
    Envelope,
    OpCompleted,
    ProgressReported,
    RunTrial,
    TrialStarted,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.client import SearcherClient
from rung.searcher.service.service import SearcherService

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BLOCK_S = 1.0
CONFIG = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}


class _Worker:
    """Takes run_trial commands and sends events, as a worker would."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.work: list[RunTrial] = []
        self.sent = 0

    async def start(self) -> None:
        topology = self.broker.topology
        queue = await self.broker.declare_private_queue(
            (topology.commands_exchange, topology.worker_key("bench"))
        )

        async def on_work(delivery: Delivery) -> None:
            body = decode(delivery.body).body
            if isinstance(body, RunTrial):
                self.work.append(body)
            await delivery.ack()

        async def on_control(delivery: Delivery) -> None:
            await delivery.ack()

        await self.broker.subscribe(topology.work_queue, on_work, prefetch=10)
        await self.broker.subscribe(queue, on_control, prefetch=10)

    async def send(self, body: Body) -> None:
        self.sent += 1
        envelope = Envelope(message_id=f"bench/1/{self.sent}", body=body)
        topology = self.broker.topology
        await self.broker.publish(
            topology.events_exchange,
            topology.EVENTS_KEY,
            encode(envelope),
            message_id=envelope.message_id,
        )


async def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the searcher did not get there in time")
        await asyncio.sleep(0.0005)


def _ids(experiment_id: str) -> dict[str, Any]:
    return {"experiment_id": experiment_id, "trial_id": 1, "attempt": 1, "worker_id": "bench"}


async def _latencies(
    service: SearcherService, worker: _Worker, experiment_id: str, count: int
) -> list[float]:
    """Milliseconds from an input's publish to its record being durable, one at a time."""
    event_log = service.experiments[experiment_id].host.log
    out = []
    for units in range(count):
        target = event_log.seq + 1
        began = time.perf_counter()
        await worker.send(ProgressReported(**_ids(experiment_id), units=units))
        await _until(lambda target=target: event_log.durable_seq >= target)
        out.append((time.perf_counter() - began) * 1000)
    return out


async def _measure(broker: Broker, state: Path, count: int) -> dict[str, Any]:
    service = SearcherService(broker, state / "state", worker_timeout_s=600)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await _until(service.ready.is_set)
        worker = _Worker(broker)
        await worker.start()
        client = SearcherClient(broker)
        context = state / "context"
        context.mkdir()
        (context / "train.py").write_text("pass\n")
        a = (await client.create_experiment(CONFIG, context))["experiment_id"]
        b = (await client.create_experiment(CONFIG, context))["experiment_id"]
        await _until(lambda: len(worker.work) == 2)
        for experiment_id in (a, b):
            # The start echoes its run_trial's token, as a worker does.
            token = next(w.start_token for w in worker.work if w.experiment_id == experiment_id)
            await worker.send(TrialStarted(**_ids(experiment_id), slots=1, start_token=token))
        await _until(
            lambda: all(service.experiments[e].host.run.by_id[1].worker_id for e in (a, b))
        )
        before = await _latencies(service, worker, b, count)
        real_publish = broker.publish

        async def blocked(exchange: str, key: str, body: bytes, **kw: Any) -> None:
            if (kw.get("message_id") or "").startswith(f"{a}/") and "/record/" not in kw[
                "message_id"
            ]:
                await asyncio.sleep(BLOCK_S)
                raise PublishTimeoutError("blocked by the benchmark")
            await real_publish(exchange, key, body, **kw)

        broker.publish = blocked  # type: ignore[method-assign,assignment]
        await worker.send(OpCompleted(**_ids(a), length=3, metric=0.1))  # A's close blocks
        during = await _latencies(service, worker, b, count)
        live = service.experiments[a]
        await _until(lambda: live.retrying)
        began = time.perf_counter()
        await _latencies(service, worker, a, 5)
        probe_ms = (time.perf_counter() - began) * 1000
        broker.publish = real_publish  # type: ignore[method-assign]
        return {
            "other_p50_ms_before": round(statistics.median(before), 2),
            "other_p50_ms_while_blocked": round(statistics.median(during), 2),
            "other_max_ms_while_blocked": round(max(during), 2),
            "five_inputs_ms": round(probe_ms, 1),
            "block_s": BLOCK_S,
            "inputs": count,
        }
    finally:
        stop.set()
        await task


async def _one(*, rabbitmq: bool, count: int) -> dict[str, Any]:
    topology = Topology(f"bench-isolation-{time.time_ns()}")
    broker: Broker = (
        RabbitBroker(AMQP_URL, topology, name="bench-isolation")
        if rabbitmq
        else MemoryBroker(topology)
    )
    await broker.start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            figures = await _measure(broker, Path(directory), count)
    finally:
        await broker.delete_topology()
        await broker.close()
    return {"workload": "isolation", "broker": "rabbitmq" if rabbitmq else "memory", **figures}


def run(*, quick: bool = False, **_: Any) -> list[dict[str, Any]]:
    count = 20 if quick else 200
    rows = [asyncio.run(_one(rabbitmq=rabbitmq, count=count)) for rabbitmq in (False, True)]
    for row in rows:
        print(json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rabbitmq", action="store_true", help="on the local RabbitMQ")
    parser.add_argument("--inputs", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_one(rabbitmq=args.rabbitmq, count=args.inputs))))


if __name__ == "__main__":
    main()
