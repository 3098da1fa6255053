"""Where a trial segment's time goes: workload 2's sleep trials, timed from inside.

Issue 18's instrument, less noisy than utilization alone. Two searches on the in-memory
broker with 8 workers, each repeated: ``flat`` (random search, 200 trials of one 20 ms
step each: every process trains one step and ends) and ``asha`` (workload 2's successive
halving). The training script (``bench/contexts/segment``) stamps each phase of its
process's life and writes them to its run directory; the worker's own clock is not used.
Per run: wall time, utilization, and the CPU of this process (searcher, workers and
broker share it) and of the processes it started (trials and fork servers), per trial
process. Pooled over the runs, the median of each phase:

* ``start``: the previous process on the same worker left its script, to this script's
  first line (its exit and reaping, the next ``run_trial``, the context's copy, the
  channel, the fork);
* ``init``: the first line to ``core.init()`` returned; ``first_op``: from there to the
  first operation;
* ``train``, ``store`` (``checkpoint.store_path``: the files, four fsyncs, the rename),
  ``report`` (``report_completed``);
* ``continue``: an operation's report to the next operation in the same process (the
  searcher's decision and its hop); ``leave``: the last report to the script's end (the
  decision to pause or close, told to the waiting script);

and the script's own page faults and CPU up to its end (not its exit).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.peer_compare import HERE, STEP_S, asha_config

__all__ = ["run"]

WORKERS = 8
PHASES = ("start", "init", "first_op", "train", "store", "report", "continue", "leave")


def _flat(trials: int) -> dict[str, Any]:
    config = asha_config(trials, WORKERS)
    config["searcher"] = {
        "name": "random",
        "metric": "loss",
        "max_length": 1,
        "max_trials": trials,
        "max_concurrent_trials": WORKERS,
    }
    return config


async def _experiment(state: Path, config: dict[str, Any]) -> tuple[float, int]:
    import rung  # noqa: PLC0415 (the client is imported lazily by rung itself)

    # (RUNG_BENCH_SEGMENT_BROKER: an AMQP URL, to run it on RabbitMQ instead)
    broker_url = os.environ.get("RUNG_BENCH_SEGMENT_BROKER")
    async with rung.Client.local(state, workers=WORKERS, broker_url=broker_url) as client:
        start = time.perf_counter()
        experiment = await client.create_experiment(config, HERE / "contexts" / "segment")
        ended = await experiment.wait()
        wall = time.perf_counter() - start
        summary = await experiment.describe()
    if ended != "COMPLETED":
        raise RuntimeError(f"the segment experiment ended {ended}")
    return wall, sum(t.length for t in summary.trials)


def _phases(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each phase's durations in ms, over every process of one run."""
    phases: dict[str, list[float]] = defaultdict(list)
    by_server: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_server[record["parent"]].append(record)
        ops = record["ops"]
        phases["init"].append(record["init"] - record["exec"])
        if ops:
            phases["first_op"].append(ops[0]["op"] - record["init"])
            phases["leave"].append(record["left"] - ops[-1]["reported"])
        for n, op in enumerate(ops):
            phases["train"].append(op["trained"] - op["op"])
            phases["store"].append(op["stored"] - op["trained"])
            phases["report"].append(op["reported"] - op["stored"])
            if n:
                phases["continue"].append(op["op"] - op["asked"])
    # One fork server per worker, and these workers have one slot each (Client.local's
    # default): a fork server's processes are one slot's, in order.
    for processes in by_server.values():
        processes.sort(key=lambda r: r["exec"])
        for before, after in itertools.pairwise(processes):
            phases["start"].append(after["exec"] - before["left"])
    return {name: [1000 * s for s in seconds] for name, seconds in phases.items()}


def _once(config: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="rung-bench-segment-") as tmp:
        state = Path(tmp)
        own, children = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        stamps = state / "stamps"
        stamps.mkdir()
        hyperparameters = {
            **config["hyperparameters"],
            "stamps": {"type": "const", "val": str(stamps)},
        }
        config = {**config, "hyperparameters": hyperparameters}
        wall, steps = asyncio.run(_experiment(state, config))
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        records = [json.loads(p.read_text()) for p in stamps.glob("segment-*.json")]
    if not records:
        raise RuntimeError("no trial process wrote its segment-<pid>.json")
    n = len(records)
    figures = {
        "wall_s": wall,
        "utilization": steps * STEP_S / WORKERS / wall,
        "processes": float(n),
        "steps": float(steps),
        "main_cpu_ms": 1000
        * (own_after.ru_utime - own.ru_utime + own_after.ru_stime - own.ru_stime)
        / n,
        "started_cpu_ms": 1000
        * (
            children_after.ru_utime
            - children.ru_utime
            + children_after.ru_stime
            - children.ru_stime
        )
        / n,
    }
    return figures, records


def run(*, quick: bool) -> list[dict[str, Any]]:
    trials = 40 if quick else 200
    repetitions = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    for mode, config in (("flat", _flat(trials)), ("asha", asha_config(trials, WORKERS))):
        runs = [_once(config) for _ in range(repetitions)]
        pooled: dict[str, list[float]] = defaultdict(list)
        for _, records in runs:
            for name, values in _phases(records).items():
                pooled[name].extend(values)
        every = [record for _, records in runs for record in records]
        row: dict[str, Any] = {"workload": "segment", "mode": mode, "trials": trials}
        for key in ("wall_s", "utilization", "processes", "steps", "main_cpu_ms", "started_cpu_ms"):
            row[key] = round(statistics.median(figures[key] for figures, _ in runs), 4)
        row["phase_ms_p50"] = {
            name: round(statistics.median(pooled[name]), 2) for name in PHASES if pooled[name]
        }
        row["script_minflt_p50"] = statistics.median(r["minflt"] for r in every)
        row["script_cpu_ms_p50"] = round(
            1000 * statistics.median(r["cpu_user"] + r["cpu_system"] for r in every), 2
        )
        rows.append(row)
    return rows
