"""The experiment every fault scenario runs, and the steps they share.

An ASHA search of 6 trials over the deterministic stub (``contexts/stub``) with a fixed
seed: its best trial is known from a fault-free run, so a scenario can check that faults
changed nothing that matters. Each rung-0 operation takes about a second, so faults land
in the middle of trials.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from rung.broker import RabbitBroker, Topology
from rung.broker.schemas import Envelope, WorkerHeartbeat, encode
from rung.searcher.eventlog import InputRecord, read_log
from tests.e2e.conftest import Cluster
from tests.faults.checker import Baseline, Report, check_invariants
from tests.support import AMQP_URL, wait_sync

__all__ = [
    "STUB",
    "altered",
    "command_fault",
    "config_text",
    "event_count",
    "finish",
    "poison",
    "start_experiment",
    "trial_pids",
]

STUB = Path(__file__).parent / "contexts" / "stub"

TRIALS = 6


def config_text(
    *,
    trials: int = TRIALS,
    step_sleep: float = 0.05,
    concurrent: int = 3,
    max_restarts: int = 2,
) -> str:
    return (
        "name: faults\nentrypoint: python3 train.py\n"
        "hyperparameters:\n"
        "  x: {type: double, minval: 0, maxval: 1}\n"
        f"  step_sleep: {step_sleep}\n"
        "  checkpoint_every: 5\n"
        "searcher: {name: asha, metric: loss, smaller_is_better: true, max_length: 40, "
        f"max_trials: {trials}, num_rungs: 2, divisor: 2, "
        f"max_concurrent_trials: {concurrent}}}\n"
        f"max_restarts: {max_restarts}\n"
        "reproducibility: {experiment_seed: 20261130}\n"
    )


def fault_env(fault_dir: Path) -> dict[str, str]:
    """The environment that points the stub at its commands."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    return {"RUNG_FAULT_DIR": str(fault_dir)}


def command_fault(fault_dir: Path, trial_id: int, action: str, at: int) -> None:
    """Tell the stub running trial ``trial_id`` to misbehave once, at step ``at``."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    (fault_dir / f"trial-{trial_id}.json").write_text(json.dumps({"at": at, "do": action}))


def start_experiment(cluster: Cluster, tmp_path: Path, config: str | None = None) -> str:
    path = tmp_path / "faults.yaml"
    path.write_text(config or config_text())
    created = cluster.create(path, STUB, follow=False)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def log_path(cluster: Cluster, experiment_id: str) -> Path:
    return cluster.state_dir / "experiments" / experiment_id / "events.jsonl"


def event_count(cluster: Cluster, experiment_id: str, kind: str) -> int:
    path = log_path(cluster, experiment_id)
    if not path.exists():
        return 0
    return sum(
        1
        for r in read_log(path)
        if isinstance(r, InputRecord) and r.input is not None and r.input.type == kind
    )


def wait_events(
    cluster: Cluster, experiment_id: str, kind: str, count: int, timeout: float = 60
) -> None:
    wait_sync(
        lambda: event_count(cluster, experiment_id, kind) >= count,
        timeout,
        f"{count} {kind} events",
    )


def trial_pids(cluster: Cluster, worker: str) -> list[int]:
    """The process groups of the trials ``worker`` started (they lead their own groups)."""
    pids = []
    for line in cluster.log_text(worker).splitlines():
        entry: dict[str, Any] = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "trial started":
            pids.append(int(entry["pid"]))
    return pids


def kill_trials(cluster: Cluster, worker: str) -> None:
    for pid in trial_pids(cluster, worker):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def finish(
    cluster: Cluster,
    experiment_id: str,
    baseline: Baseline | None,
    *,
    bound_s: float,
    planned_trials: int | None = TRIALS,
) -> Report:
    """Wait for the experiment to end, then run the checker."""
    done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=bound_s + 60)
    assert done.returncode in (0, 1), done.stderr
    return check_invariants(
        cluster, experiment_id, bound_s=bound_s, baseline=baseline, planned_trials=planned_trials
    )


def baseline_of(report: Report) -> Baseline:
    best = report.summary["best_trial"]
    assert best is not None, "the fault-free run has no best trial"
    return Baseline(
        best_trial_id=int(best["trial_id"]),
        best_metric=float(best["metric"]),
        trials=len(report.summary["trials"]),
        seconds=report.seconds,
    )


def poison(cluster: Cluster, messages: list[tuple[str, bytes, str]]) -> None:
    """Publish raw bodies: (routing key, body, message id) each."""

    async def send() -> None:
        broker = RabbitBroker(AMQP_URL, Topology(cluster.namespace), name="poison")
        await broker.start()
        try:
            t = broker.topology
            for key, body, message_id in messages:
                exchange = t.commands_exchange if key == t.WORK_KEY else t.events_exchange
                await broker.publish(exchange, key, body, message_id=message_id)
        finally:
            await broker.close()

    asyncio.run(send())


def altered(message_id: str, **changes: object) -> bytes:
    """A valid event's envelope with some of its fields changed."""
    beat = WorkerHeartbeat(worker_id="poisoner", slots=1, free_slots=1)
    data = json.loads(encode(Envelope(message_id=message_id, body=beat)))
    for key, value in changes.items():
        if key == "type":
            data["body"]["type"] = value
        else:
            data[key] = value
    return json.dumps(data).encode()
