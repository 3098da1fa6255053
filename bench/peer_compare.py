"""Workloads 1 and 2 of issue 7, Rung and its peers in turn, in one invocation.

1. control plane: null trials (one operation, no work) at concurrency 1 and 8;
2. utilization: sleep trials under successive halving with 8 workers.

Rung runs its searcher and workers in this process (``Client.local``) on the in-memory
broker, and on the local RabbitMQ when one answers. Each figure is the median of the
repetitions, with min and max.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import PeerError, run_peer

__all__ = ["asha_config", "control_plane", "rabbitmq_up", "scaling", "utilization"]

HERE = Path(__file__).resolve().parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
STEP_S = 0.02
MAX_T = 10

NULL_SPACE = {
    "x": {"type": "double", "minval": -10, "maxval": 10},
    "lr": {"type": "log", "minval": -5, "maxval": -1, "base": 10},
    "width": {"type": "int", "minval": 16, "maxval": 512},
}


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


async def _rung_run(config: dict[str, Any], context: str, workers: int, url: str | None) -> Any:
    import rung  # noqa: PLC0415 (the client is imported lazily by rung itself)

    async with rung.Client.local(workers=workers, broker_url=url) as client:
        start = time.perf_counter()
        experiment = await client.create_experiment(config, HERE / "contexts" / context)
        state = await experiment.wait()
        wall = time.perf_counter() - start
        summary = await experiment.describe()
    if state != "COMPLETED":
        raise RuntimeError(f"the {context} experiment ended {state}")
    return wall, summary


def rabbitmq_up() -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", 5672)) == 0


def _repeat(times: int, once: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    return [once() for _ in range(times)]


def control_plane(*, quick: bool, rung_only: bool) -> list[dict[str, Any]]:
    n = 40 if quick else 500
    repetitions = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    brokers: list[tuple[str, str | None]] = [("memory", None)]
    if rabbitmq_up():
        brokers.append(("rabbitmq", AMQP_URL))
    for concurrency in (1, 8):
        for broker, url in brokers:
            config = {
                "entrypoint": "python3 train.py",
                "hyperparameters": NULL_SPACE,
                "searcher": {
                    "name": "random",
                    "metric": "m",
                    "max_length": 1,
                    "max_trials": n,
                    "max_concurrent_trials": concurrency,
                },
            }
            walls = [
                asyncio.run(_rung_run(config, "null", concurrency, url))[0]
                for _ in range(repetitions)
            ]
            rows.append(_null_row(f"rung ({broker})", concurrency, n, walls))
        if rung_only:
            continue
        peers: list[tuple[str, str, str]] = [("optuna", "optuna_bench.py", "memory")]
        if concurrency > 1:
            peers.append(("optuna", "optuna_bench.py", "journal"))
        peers.append(("ray", "ray_bench.py", "reuse"))
        for peer, script, mode in peers:
            count = n if peer != "ray" else min(n, 100 if concurrency > 1 else 200)
            try:
                walls = [
                    float(
                        run_peer(peer, script, "null", str(count), str(concurrency), mode)[
                            "seconds"
                        ]
                    )
                    for _ in range(repetitions)
                ]
            except PeerError as exc:
                rows.append(
                    {
                        "workload": "control_plane",
                        "system": f"{peer} ({mode})",
                        "error": str(exc)[:500],
                    }
                )
                continue
            rows.append(_null_row(f"{peer} ({mode})", concurrency, count, walls))
    return rows


def _null_row(system: str, concurrency: int, n: int, walls: list[float]) -> dict[str, Any]:
    rates = [n / w for w in walls]
    return {
        "workload": "control_plane",
        "system": system,
        "concurrency": concurrency,
        "trials": n,
        "trials_per_s": _stats(rates),
        "overhead_ms": _stats([1000 * w * concurrency / n for w in walls]),
    }


def asha_config(trials: int, workers: int) -> dict[str, Any]:
    return {
        "entrypoint": "python3 train.py",
        "hyperparameters": {
            "x": {"type": "double", "minval": 0, "maxval": 1},
            "y": {"type": "double", "minval": 0, "maxval": 1},
        },
        "searcher": {
            "name": "asha",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": MAX_T,
            "num_rungs": 3,
            "divisor": 3,
            "max_trials": trials,
            "max_concurrent_trials": workers,
        },
    }


def _sleep_runs(trials: int, workers: int, repetitions: int) -> list[dict[str, float]]:
    runs = []
    for _ in range(repetitions):
        wall, summary = asyncio.run(_rung_run(asha_config(trials, workers), "sleep", workers, None))
        runs.append({"seconds": wall, "steps": float(sum(t.length for t in summary.trials))})
    return runs


def utilization(*, quick: bool, rung_only: bool) -> list[dict[str, Any]]:
    n = 40 if quick else 200
    workers = 8
    repetitions = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    runs = _sleep_runs(n, workers, repetitions)
    rows.append(_sleep_row("rung asha (memory)", n, workers, runs))
    if rung_only:
        return rows
    for peer, script, mode in (
        ("optuna", "optuna_bench.py", "sh"),
        ("optuna", "optuna_bench.py", "hyperband"),
        ("ray", "ray_bench.py", "asha"),
    ):
        try:
            peer_runs = [
                run_peer(peer, script, "sleep", str(n), str(workers), mode)
                for _ in range(repetitions)
            ]
        except PeerError as exc:
            rows.append(
                {"workload": "utilization", "system": f"{peer} ({mode})", "error": str(exc)[:500]}
            )
            continue
        rows.append(_sleep_row(f"{peer} ({mode})", n, workers, peer_runs))
    return rows


def _sleep_row(system: str, n: int, workers: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    used = [r["steps"] * STEP_S / workers / r["seconds"] for r in runs]
    ideal = [r["steps"] * STEP_S / workers for r in runs]
    return {
        "workload": "utilization",
        "system": system,
        "trials": n,
        "workers": workers,
        "executed_steps": _stats([float(r["steps"]) for r in runs]),
        "utilization": _stats(used),
        "wall_s": _stats([float(r["seconds"]) for r in runs]),
        "ideal_s": _stats(ideal),
    }


def scaling(*, quick: bool, rung_only: bool) -> list[dict[str, Any]]:  # noqa: ARG001
    """Workload 4: workload 2 on 1, 2, 4, 8 and 16 workers (Rung only).

    Throughput is executed steps per second of wall time (the number of steps differs a
    little between runs, as ASHA's decisions depend on the order results arrive in);
    speedup is against one worker, efficiency is speedup over the number of workers.
    """
    n = 24 if quick else 200
    repetitions = 1 if quick else 3
    counts = (1, 2, 4) if quick else (1, 2, 4, 8, 16)
    rows: list[dict[str, Any]] = []
    base: float | None = None
    for workers in counts:
        runs = _sleep_runs(n, workers, repetitions)
        throughput = statistics.median(r["steps"] / r["seconds"] for r in runs)
        base = base or throughput
        row = _sleep_row("rung asha (memory)", n, workers, runs)
        row |= {
            "workload": "scaling",
            "steps_per_s": throughput,
            "speedup": throughput / base,
            "efficiency": throughput / base / workers,
        }
        rows.append(row)
    return rows
