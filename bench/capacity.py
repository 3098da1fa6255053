"""Searcher capacity (issue 18): the largest input rate one searcher sustains on RabbitMQ.

A real searcher service runs in this process on the local RabbitMQ, with ``experiments``
random searches of ``trials`` null trials each (length 1, up to ``concurrency`` trials of
each at a time). Simulated workers run in a process of their own (``--sim-workers``):
they speak the worker's protocol without starting anything, so that every input the
searcher handles costs only the searcher and the broker. For each ``run_trial`` a
simulated slot sends ``trial_started`` (with the command's start token), then
``op_completed``; it answers ``continue_trial`` with another ``op_completed`` and
``pause_trial`` or ``close_trial`` with ``trial_exited``, each event confirmed, as a
worker does. With more simulated slots than the searcher can feed, the searcher is the
bottleneck, and the rate it applies inputs at is its capacity.

Reported: inputs applied per second (every record the experiments' logs gained, each
made durable before its input was acknowledged), trials per second, and the CPU use in
that time (1.0: one core, busy all the time) of the searcher, of the simulated workers
and of RabbitMQ: where the three together fill the machine's cores, the figure is the
machine's, a lower bound of the searcher's.

``python -m bench.capacity [--experiments N] [--trials N] [--slots N]``, or the
``capacity`` workload of ``python -m bench`` (needs RabbitMQ).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rung.broker import RabbitBroker, Topology
from rung.broker.port import Delivery
from rung.broker.schemas import (
    CloseTrial,
    ContinueTrial,
    Envelope,
    ExitReason,
    OpCompleted,
    PauseTrial,
    RunTrial,
    TrialExited,
    TrialStarted,
    decode,
    encode,
)
from rung.broker.schemas.envelope import Body

__all__ = ["run"]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
WORKER_ID = "capacity-sim"
ROOT = Path(__file__).resolve().parent.parent


def _config(trials: int, concurrency: int) -> dict[str, Any]:
    return {
        "entrypoint": "python3 train.py",
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {
            "name": "random",
            "metric": "loss",
            "max_length": 1,
            "max_trials": trials,
            "max_concurrent_trials": concurrency,
        },
        "max_restarts": 0,
    }


# ---------------------------------------------------------------- simulated workers
class _SimWorkers:
    """Many slots of null trials behind one worker id and one connection."""

    def __init__(self, broker: RabbitBroker, slots: int) -> None:
        self.broker = broker
        self.slots = slots
        self._seq = itertools.count(1)
        self._session = os.getpid()

    async def send(self, body: Body) -> None:
        envelope = Envelope(
            message_id=f"{WORKER_ID}/{self._session}/{next(self._seq)}",
            experiment_id=getattr(body, "experiment_id", ""),
            body=body,
        )
        topology = self.broker.topology
        await self.broker.publish(
            topology.events_exchange,
            topology.events_key(WORKER_ID),
            encode(envelope),
            message_id=envelope.message_id,
        )

    @staticmethod
    def _ids(body: RunTrial | ContinueTrial | PauseTrial | CloseTrial) -> dict[str, Any]:
        return {
            "experiment_id": body.experiment_id,
            "trial_id": body.trial_id,
            "attempt": body.attempt,
            "worker_id": WORKER_ID,
        }

    async def on_work(self, delivery: Delivery) -> None:
        body = decode(delivery.body).body
        if isinstance(body, RunTrial):
            ids = self._ids(body)
            await self.send(TrialStarted(**ids, slots=1, start_token=body.start_token))
            await self.send(OpCompleted(**ids, length=body.length, metric=0.5))
        await delivery.ack()

    async def on_control(self, delivery: Delivery) -> None:
        body = decode(delivery.body).body
        await delivery.ack()
        match body:
            case ContinueTrial():
                await self.send(OpCompleted(**self._ids(body), length=body.length, metric=0.5))
            case PauseTrial() | CloseTrial():
                reason = (
                    ExitReason.COMPLETED if body.type == "close_trial" else ExitReason.OUT_OF_OPS
                )
                await self.send(TrialExited(**self._ids(body), reason=reason, exit_code=0))

    async def run(self) -> None:
        topology = self.broker.topology
        control = await self.broker.declare_private_queue(
            (topology.commands_exchange, topology.worker_key(WORKER_ID))
        )
        await self.broker.subscribe(control, self.on_control, prefetch=self.slots)
        await self.broker.subscribe(topology.work_queue, self.on_work, prefetch=self.slots)
        print("ready", flush=True)  # the searcher's side waits for this line
        await asyncio.Event().wait()  # until killed


async def _sim_main(prefix: str, slots: int) -> None:
    broker = RabbitBroker(AMQP_URL, Topology(prefix), name="bench-capacity-sim")
    await broker.start()
    await _SimWorkers(broker, slots).run()


# ---------------------------------------------------------------- the searcher
def _cpu_s(pid: int | None) -> float:
    """A process's CPU time so far (user and system), from /proc; 0 if it is unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pid() -> int | None:
    """RabbitMQ's Erlang VM on this machine, if there is one to see."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" ", 2)[1] == "(beam.smp)":
                return int(stat.parent.name)
        except (OSError, IndexError):
            continue
    return None


async def _ready(sim: asyncio.subprocess.Process) -> None:
    """Until the simulated workers say they consume (their log lines come first)."""
    assert sim.stdout is not None  # noqa: S101 (started with a pipe)
    while (line := await sim.stdout.readline()) != b"ready\n":
        if not line:
            raise RuntimeError("the simulated workers exited before they were ready")


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the searcher did not finish in time")
        await asyncio.sleep(0.01)


async def _measure(experiments: int, trials: int, concurrency: int, slots: int) -> dict[str, Any]:
    # Here, not at the top: the simulated workers' process imports only the broker's side.
    from rung.searcher.client import SearcherClient  # noqa: PLC0415
    from rung.searcher.service.service import SearcherService  # noqa: PLC0415
    from rung.searcher.trials.model import ENDED  # noqa: PLC0415

    prefix = f"bench-capacity-{time.time_ns()}"
    broker = RabbitBroker(AMQP_URL, Topology(prefix), name="bench-capacity")
    await broker.start()
    sim = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.capacity", "--sim-workers", prefix, str(slots)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    stop = asyncio.Event()
    drain: asyncio.Task[bytes] | None = None
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory)
        service = SearcherService(broker, state / "state", worker_timeout_s=3600)
        task = asyncio.create_task(service.run(stop))
        try:
            await _until(service.ready.is_set, 60)
            await asyncio.wait_for(_ready(sim), timeout=120)
            assert sim.stdout is not None  # noqa: S101 (started with a pipe)
            # Whatever else they print is read and dropped: the pipe never fills.
            drain = asyncio.create_task(sim.stdout.read())
            client = SearcherClient(broker)
            context = state / "context"
            context.mkdir()
            (context / "train.py").write_text("pass\n")
            config = _config(trials, concurrency)
            # The window opens before the first experiment exists: every trial and every
            # record of theirs falls inside it.
            broker_pid = _broker_pid()
            others0 = (_cpu_s(sim.pid), _cpu_s(broker_pid))
            wall0, cpu0 = time.perf_counter(), time.process_time()
            ids = [
                (await client.create_experiment(config, context))["experiment_id"]
                for _ in range(experiments)
            ]
            hosts = [service.experiments[e].host for e in ids]

            def done() -> bool:
                if sim.returncode is not None:
                    raise RuntimeError(f"the simulated workers exited ({sim.returncode})")
                return all(service.experiments[e].host.run.state in ENDED for e in ids)

            await _until(done, 1800)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            sim_cpu = _cpu_s(sim.pid) - others0[0]
            broker_cpu = _cpu_s(broker_pid) - others0[1] if broker_pid is not None else None
            records = sum(h.log.seq for h in hosts)
        finally:
            stop.set()
            await task
            with contextlib.suppress(ProcessLookupError):
                sim.kill()
            await sim.wait()
            if drain is not None:
                await drain
            await broker.delete_topology()
            await broker.close()
    return {
        "workload": "capacity",
        "experiments": experiments,
        "trials": experiments * trials,
        "slots": slots,
        "inputs_per_s": round(records / wall, 1),
        "trials_per_s": round(experiments * trials / wall, 1),
        "searcher_cpu": round(cpu / wall, 2),
        "sim_workers_cpu": round(sim_cpu / wall, 2),
        "broker_cpu": None if broker_cpu is None else round(broker_cpu / wall, 2),
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 2),
        "records": records,
    }


def run(*, quick: bool = False, **_: Any) -> list[dict[str, Any]]:
    from bench.peer_compare import rabbitmq_up  # noqa: PLC0415

    if not rabbitmq_up():
        return [{"workload": "capacity", "error": "no RabbitMQ at 127.0.0.1:5672"}]
    shapes = [(4, 50, 16, 64)] if quick else [(1, 1000, 64, 64), (8, 250, 16, 128)]
    rows = []
    for experiments, trials, concurrency, slots in shapes:
        row = asyncio.run(_measure(experiments, trials, concurrency, slots))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--trials", type=int, default=250, help="per experiment")
    parser.add_argument("--concurrency", type=int, default=16, help="trials per experiment")
    parser.add_argument("--slots", type=int, default=128, help="simulated slots")
    parser.add_argument("--sim-workers", nargs=2, metavar=("PREFIX", "SLOTS"), help="internal")
    args = parser.parse_args()
    if args.sim_workers:
        asyncio.run(_sim_main(args.sim_workers[0], int(args.sim_workers[1])))
        return
    row = asyncio.run(_measure(args.experiments, args.trials, args.concurrency, args.slots))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
