"""How fast a log is read back: a synthetic log of a large random search.

The log is made by driving the real experiment and trial lifecycle with a scripted
worker, written in the real record format, with a snapshot file 200 records before its
end, as a running searcher leaves it. It has the shape of a real run: each trial starts,
reports progress and a training metric for each of its 10 units of length, completes
and exits, 23 records per trial. (The digits example's log had 381 records for 16
trials.) Three figures, each the median of 3 with min..max:

* ``scan``: frame and number every record (what opening a log costs);
* ``recover``: what a restarted searcher does: scan, load the snapshot, fold the tail;
* ``fold``: parse, validate and fold every record, as ``rung replay`` (the timeline)
  and ``--verify`` do before they explain or compare.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rung.broker.schemas import MetricsReported, OpCompleted, ProgressReported
from rung.broker.schemas.envelope import Body
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.eventlog import (
    SNAPSHOT_FILE,
    CreatedRecord,
    InputRecord,
    read_log,
    read_snapshot,
)
from rung.searcher.eventlog import replay as replay_log
from rung.searcher.eventlog.snapshots import StoredSnapshot, line_digest, write_snapshot
from rung.searcher.experiment import Experiment
from rung.searcher.methods import RULES
from rung.searcher.testing import scripted_event
from rung.searcher.trials import TERMINAL, ExperimentRun, Step, TrialRuntime

__all__ = ["random_search", "run"]

TAIL = 200


def _reports(done: OpCompleted) -> list[Body]:
    """What a script reports on its way to ``done``: progress and metrics every unit."""
    key = done.model_dump(include={"experiment_id", "trial_id", "attempt", "worker_id"})
    reports: list[Body] = []
    for unit in range(1, done.length + 1):
        reports.append(ProgressReported(**key, units=unit))
        reports.append(
            MetricsReported(
                **key, group="training", steps_completed=unit, metrics={"loss": 1 / unit}
            )
        )
    return reports


def random_search(trials: int, max_length: int) -> ExperimentConfig:
    """A seeded random search of ``trials`` trials, 8 at a time, over one double."""
    raw = {
        "entrypoint": "python3 t.py",
        "reproducibility": {"experiment_seed": 1},
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {
            "name": "random",
            "metric": "x",
            "max_length": max_length,
            "max_trials": trials,
            "max_concurrent_trials": 8,
        },
    }
    return parse_config(raw).config


def _make_log(path: Path, records: int) -> int:
    config = random_search(records // 23 + 1, 10)  # 23 records per trial: see _reports
    run = ExperimentRun("bench", Experiment(config), context_hash="0" * 64, checkpoint_root="/c")
    unfinished: dict[str, TrialRuntime] = {}  # scripted_event would scan every trial
    seen: set[str] = set()
    created = CreatedRecord(
        seq=1,
        experiment_id="bench",
        context_hash="0" * 64,
        checkpoint_root="/c",
        config=config.model_dump(mode="json", by_alias=True),
        rules=RULES,
    )
    with path.open("wb", buffering=1 << 20) as handle:
        handle.write(created.model_dump_json().encode() + b"\n")
        seq = 1

        def write(message_id: str, body: Body | None, step: Step) -> None:
            nonlocal seq
            seq += 1
            line = InputRecord.of(seq, message_id, body, step).model_dump_json().encode()
            handle.write(line + b"\n")
            seen.add(message_id)
            for command in step.commands:
                trial = run.by_id.get(getattr(command.body, "trial_id", -1))
                if trial is not None:
                    unfinished[trial.request_id] = trial
            for key in [k for k, t in unfinished.items() if t.state in TERMINAL]:
                del unfinished[key]
            if seq == records - TAIL:
                state = {**run.snapshot(), "seen": sorted(seen)}
                snapshot = StoredSnapshot(
                    experiment_id="bench", seq=seq, record_sha256=line_digest(line), state=state
                )
                write_snapshot(path.with_name(SNAPSHOT_FILE), snapshot)

        write("start", None, run.start())
        count = 0
        while (
            seq < records and (body := scripted_event(run, trials=unfinished.values())) is not None
        ):
            for report in _reports(body) if isinstance(body, OpCompleted) else []:
                count += 1
                write(f"m{count}", report, run.on_event(report))
            count += 1
            write(f"m{count}", body, run.on_event(body))
    return seq


def _ignore(*_: object) -> None:
    """The timeline's hook, less the explaining: every record is parsed and folded."""


def _timed(action: Callable[[], object]) -> dict[str, float]:
    seconds: list[float] = []
    for _ in range(3):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
    }


def run(*, quick: bool) -> list[dict[str, object]]:
    target = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        start = time.perf_counter()
        records = _make_log(path, target)
        made = time.perf_counter() - start
        size = path.stat().st_size

        def recover() -> None:
            replayed = replay_log(
                read_log(path), snapshot=read_snapshot(path.with_name(SNAPSHOT_FILE))
            )
            if replayed.records != records:
                raise RuntimeError(f"recovered {replayed.records} of {records} records")

        timings = {
            "scan": _timed(lambda: read_log(path)),
            "recover": _timed(recover),
            "fold": _timed(lambda: replay_log(read_log(path), on_step=_ignore)),
        }
    rows: list[dict[str, object]] = []
    for phase, timing in timings.items():
        rows.append(
            {
                "workload": "replay",
                "phase": phase,
                "records": records,
                "log_mib": round(size / 2**20, 1),
                "seconds_median": round(timing["median"], 3),
                "seconds_min": round(timing["min"], 3),
                "seconds_max": round(timing["max"], 3),
                "records_per_s": round(records / timing["median"]),
                "seconds_per_million_records": round(timing["median"] / records * 1e6, 2),
                "log_made_in_s": round(made, 1),
            }
        )
    return rows
