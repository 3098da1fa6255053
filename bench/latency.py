"""Workload 3: dispatch latency, with the raw RabbitMQ round trip as its floor.

* **floor**: aio-pika alone, in the same run. A durable request queue and a durable reply
  queue, persistent messages of about 250 bytes, every publish confirmed, manual acks, and
  an echo consumer in another process: searcher -> worker -> searcher, one in flight.
* **Rung**: ASHA over the sleep objective (``bench/contexts/latency``: 2 ms steps), 8
  workers of one slot each, through ``Client.local`` on RabbitMQ and on the in-memory
  broker. The training script writes timestamps; the searcher's log has the decisions.

  - ``continue``: a script reports an operation completed -> the next operation arrives
    in that same process, where the searcher continued the trial on that completion
    (ASHA promoted it at once; no waiting for other trials is counted);
  - ``create_to_start``: the searcher logs a decision that creates a trial -> the new
    trial's script runs its first line (the process start included);
  - ``turnaround``: a script reports its last operation completed -> the next trial's
    script runs its first line on that worker (the old process's exit included).

  Where a trial's time goes besides its steps, as parts of the above:

  - ``report_to_logged``: a script reports an operation completed -> the searcher has
    the event in its log (the event's hop and the decision);
  - ``stop_to_exit_logged``: the searcher logs a completion it answers with pause or
    close -> it logs that attempt's ``trial_exited`` (the command's hop, the script's
    ``operations()`` ending, its process exiting, and the event's hop);
  - ``start_to_first_op``: a script's first line -> its first operation arrives
    (``core.init()`` and the first ``operations()`` step);
  - ``checkpoint_save``: the script starts ``store_path`` -> it has returned (the files
    written and fsynced, and ``checkpoint_saved`` confirmed).

Each latency is reported as p50 and p99 over all the samples of the repetitions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["run"]

HERE = Path(__file__).resolve().parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PAYLOAD = json.dumps({"type": "run_trial", "pad": "x" * 200}).encode()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * cuts[98],
        "n": len(ordered),
    }


# ---------------------------------------------------------------------- the floor
async def _echo(url: str, requests: str, replies: str) -> None:
    import aio_pika  # noqa: PLC0415

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=1)
    queue = await channel.declare_queue(requests, durable=True)
    async with queue.iterator() as messages:
        async for message in messages:
            if message.body == b"stop":
                await message.ack()
                break
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=replies,
            )
            await message.ack()
    await connection.close()


async def _round_trips(url: str, count: int) -> list[float]:
    import aio_pika  # noqa: PLC0415

    name = f"rung-bench-{uuid.uuid4().hex[:8]}"
    requests, replies = f"{name}-requests", f"{name}-replies"
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    request_queue = await channel.declare_queue(requests, durable=True)
    reply_queue = await channel.declare_queue(replies, durable=True)
    echo = subprocess.Popen(  # noqa: ASYNC220 (started once, waited for at the end)
        [sys.executable, "-m", "bench.latency", "echo", url, requests, replies]
    )
    samples: list[float] = []
    try:
        while not await _has_consumer(channel, requests):  # noqa: ASYNC110 (a broker poll)
            await asyncio.sleep(0.05)
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def on_reply(message: Any) -> None:
            await message.ack()
            arrived.put_nowait(time.perf_counter())

        await reply_queue.consume(on_reply)
        for _ in range(count):
            start = time.perf_counter()
            await channel.default_exchange.publish(
                aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=requests,
            )
            done = await asyncio.wait_for(arrived.get(), timeout=10)
            samples.append(done - start)
        await channel.default_exchange.publish(aio_pika.Message(b"stop"), routing_key=requests)
    finally:
        await asyncio.to_thread(echo.wait, 10)
        await request_queue.delete(if_unused=False, if_empty=False)
        await reply_queue.delete(if_unused=False, if_empty=False)
        await connection.close()
    return samples


async def _has_consumer(channel: Any, queue: str) -> bool:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.consumer_count) > 0


# ---------------------------------------------------------------------- Rung
async def _rung_samples(trials: int, url: str | None) -> dict[str, list[float]]:
    import rung  # noqa: PLC0415
    from bench.peer_compare import asha_config  # noqa: PLC0415 (workload 2's ASHA)

    with tempfile.TemporaryDirectory() as times:
        os.environ["RUNG_BENCH_TIMES"] = times
        os.environ["RUNG_BENCH_STEP_S"] = "0.002"
        try:
            passed = ("RUNG_BENCH_TIMES", "RUNG_BENCH_STEP_S")  # trials' env is allowlisted
            async with rung.Client.local(workers=8, broker_url=url, trial_env=passed) as client:
                experiment = await client.create_experiment(
                    asha_config(trials, 8), HERE / "contexts" / "latency"
                )
                state = await experiment.wait()
                history = await experiment.history()
        finally:
            del os.environ["RUNG_BENCH_TIMES"], os.environ["RUNG_BENCH_STEP_S"]
        if state != "COMPLETED":
            raise RuntimeError(f"the latency experiment ended {state}")
        notes = _read_notes(Path(times))
    return _latencies(notes, history)


def _read_notes(times: Path) -> list[dict[str, Any]]:
    return [
        {**json.loads(line), "pid": path.stem}
        for path in times.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


def _latencies(notes: list[dict[str, Any]], history: list[Any]) -> dict[str, list[float]]:
    by_process: dict[str, list[dict[str, Any]]] = {}
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for note in notes:
        by_process.setdefault(note["pid"], []).append(note)
        by_worker.setdefault(note["worker"], []).append(note)
    return {
        "continue": _continues(notes, history),
        "create_to_start": _create_to_start(by_process, history),
        "turnaround": _turnarounds(by_worker),
        **_parts(notes, by_process, history),
    }


def _parts(
    notes: list[dict[str, Any]], by_process: dict[str, list[dict[str, Any]]], history: list[Any]
) -> dict[str, list[float]]:
    """The parts of a trial's time that are not its steps (see the module's docstring)."""
    logged: dict[tuple[int, int], float] = {}
    exited: dict[tuple[int, int], float] = {}
    stopped: list[tuple[int, int, float]] = []
    for record in history:
        body = getattr(record, "input", None)
        if body is None:
            continue
        if body.type == "op_completed":
            logged.setdefault((body.trial_id, body.length), record.at)
            stopped.extend(
                (c.body.trial_id, c.body.attempt, record.at)
                for c in record.commands
                if c.body.type in ("pause_trial", "close_trial")
            )
        elif body.type == "trial_exited":
            exited.setdefault((body.trial_id, body.attempt), record.at)
    first_ops, saves = [], []
    for events in by_process.values():
        events.sort(key=lambda e: e["t"])
        start = next((e["t0"] for e in events if e["event"] == "start"), None)
        first_op = next((e["t"] for e in events if e["event"] == "op"), None)
        if start is not None and first_op is not None:
            first_ops.append(first_op - start)
        saves += [
            after["t"] - before["t"]
            for before, after in itertools.pairwise(events)
            if (before["event"], after["event"]) == ("saving", "completed")
        ]
    return {
        "report_to_logged": [
            logged[key] - n["t"]
            for n in notes
            if n["event"] == "completed" and (key := (n["trial"], n["length"])) in logged
        ],
        "stop_to_exit_logged": [
            exited[(trial, attempt)] - at
            for trial, attempt, at in stopped
            if (trial, attempt) in exited
        ],
        "start_to_first_op": first_ops,
        "checkpoint_save": saves,
    }


def _continues(notes: list[dict[str, Any]], history: list[Any]) -> list[float]:
    """Completion report -> next operation, where the searcher continued the trial on
    that very completion (ASHA promoted it at once): dispatch, with no waiting for
    other trials' results in it."""
    completed = {(n["trial"], n["length"]): n["t"] for n in notes if n["event"] == "completed"}
    arrived = {(n["trial"], n["length"]): n["t"] for n in notes if n["event"] == "op"}
    out = []
    for record in history:
        body = getattr(record, "input", None)
        if body is None or body.type != "op_completed":
            continue
        for command in record.commands:
            if command.body.type == "continue_trial" and command.body.trial_id == body.trial_id:
                start = completed.get((body.trial_id, body.length))
                end = arrived.get((body.trial_id, command.body.length))
                if start is not None and end is not None:
                    out.append(end - start)
    return out


def _create_to_start(
    by_process: dict[str, list[dict[str, Any]]], history: list[Any]
) -> list[float]:
    created: dict[int, float] = {}
    for record in history:
        for command in getattr(record, "commands", []):
            body = command.body
            if body.type == "run_trial" and body.attempt == 1:
                created.setdefault(body.trial_id, record.at)
    first_start: dict[int, float] = {}
    for events in by_process.values():
        for event in events:
            if event["event"] == "start":
                trial = event["trial"]
                first_start[trial] = min(first_start.get(trial, event["t0"]), event["t0"])
    return [t - created[trial] for trial, t in first_start.items() if trial in created]


def _turnarounds(by_worker: dict[str, list[dict[str, Any]]]) -> list[float]:
    out = []
    for events in by_worker.values():
        events.sort(key=lambda e: e.get("t0", e["t"]))
        for before, after in itertools.pairwise(events):
            if before["event"] == "completed" and after["event"] == "start":
                out.append(after["t0"] - before["t"])
    return out


def run(*, quick: bool, rung_only: bool) -> list[dict[str, Any]]:  # noqa: ARG001
    from bench.peer_compare import rabbitmq_up  # noqa: PLC0415

    rows: list[dict[str, Any]] = []
    trials = 24 if quick else 120
    repetitions = 1 if quick else 3
    floor: dict[str, float] | None = None
    brokers: list[tuple[str, str | None]] = [("memory", None)]
    if rabbitmq_up():
        floor = _percentiles(asyncio.run(_round_trips(AMQP_URL, 100 if quick else 1000)))
        rows.append({"system": "raw rabbitmq round trip", "kind": "floor", **floor})
        brokers.insert(0, ("rabbitmq", AMQP_URL))
    for broker, url in brokers:
        samples: dict[str, list[float]] = {}
        for _ in range(repetitions):
            for kind, values in asyncio.run(_rung_samples(trials, url)).items():
                samples.setdefault(kind, []).extend(values)
        for kind, values in samples.items():
            if len(values) < 2:
                continue
            row: dict[str, Any] = {
                "system": f"rung ({broker})",
                "kind": kind,
                **_percentiles(values),
            }
            if floor is not None:
                row["p50_over_floor"] = row["p50_ms"] / floor["p50_ms"]
            rows.append(row)
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["echo"]:
    asyncio.run(_echo(*sys.argv[2:5]))
