"""What a trial's end costs the searcher once thousands of trials hold checkpoints.

Each trial's end is a checkpoint collection (rung.searcher.trials.gc): the policy's
decision for the trials that may have changed. A random search of null trials, each
saving one checkpoint before it completes, driven through the real experiment and trial
lifecycle by a scripted worker (no broker, no log); the figure is the time the run takes
to apply a trial's ``trial_exited``, over the last 500 trials (their median and 95th
percentile), and over every trial in all. Before issue 18's third round a collection
ranked every trial's checkpoints: 35 ms a trial's end at 6,000 trials. (Under rules 2 a
trial's end no longer starts the next trial, which its last validation does: the timed
input does less than under rules 1.)
"""

from __future__ import annotations

import statistics
import time

from bench.replay import random_search
from rung.broker.schemas import CheckpointSaved, OpCompleted, TrialExited
from rung.searcher.experiment import Experiment
from rung.searcher.testing import scripted_event
from rung.searcher.trials import TERMINAL, ExperimentRun, TrialRuntime

__all__ = ["run"]

LAST = 500


def _exits(trials: int) -> list[float]:
    config = random_search(trials, 1)
    # A root named after the experiment: the run collects its checkpoints.
    run = ExperimentRun(
        "bench", Experiment(config), context_hash="0" * 64, checkpoint_root="/c/bench"
    )
    unfinished: dict[str, TrialRuntime] = {}  # scripted_event would scan every trial

    def applied(step_commands: list[object]) -> None:
        for command in step_commands:
            trial = run.by_id.get(getattr(getattr(command, "body", None), "trial_id", -1))
            if trial is not None:
                unfinished[trial.request_id] = trial
        for key in [k for k, t in unfinished.items() if t.state in TERMINAL]:
            del unfinished[key]

    applied(list(run.start().commands))
    seconds: list[float] = []
    saved = 0
    while (body := scripted_event(run, trials=list(unfinished.values()))) is not None:
        if isinstance(body, OpCompleted):
            saved += 1
            checkpoint = CheckpointSaved(
                **body.model_dump(include={"experiment_id", "trial_id", "attempt", "worker_id"}),
                uuid=f"00000000-0000-4000-8000-{saved:012d}",
                steps_completed=body.length,
                metadata={"steps_completed": body.length},
                size_bytes=1,
            )
            applied(list(run.on_event(checkpoint).commands))
        start = time.perf_counter()
        step = run.on_event(body)
        if isinstance(body, TrialExited):
            seconds.append(time.perf_counter() - start)
        applied(list(step.commands))
    if run.state != "COMPLETED" or len(seconds) != trials:
        raise RuntimeError(f"the search ended {run.state} after {len(seconds)} of {trials} exits")
    return seconds


def run(*, quick: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for trials in (1_000,) if quick else (1_000, 6_000):
        seconds = _exits(trials)
        last = sorted(seconds[-LAST:])
        rows.append(
            {
                "workload": "collect",
                "trials": trials,
                "exit_ms_p50": round(1000 * statistics.median(last), 3),
                "exit_ms_p95": round(1000 * last[int(0.95 * (len(last) - 1))], 3),
                "all_exits_s": round(sum(seconds), 2),
            }
        )
    return rows
