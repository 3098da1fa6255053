"""How experiments look in the terminal and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rung.broker.schemas import ExperimentSummary, TrialSummary, WorkerInfo
from rung.client import Checkpoint

__all__ = [
    "checkpoints_table",
    "experiments_table",
    "print_summary",
    "print_trial",
    "progress_table",
    "progress_view",
    "summary_json",
    "trial_json",
    "trials_table",
    "workers_table",
]

FINAL_TRIAL_STATES = ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP")


def trial_json(trial: TrialSummary, *, full: bool = False) -> dict[str, Any]:
    shown = {
        "trial_id": trial.trial_id,
        "hparams": trial.hparams,
        "state": trial.state,
        "length": trial.length,
        "metric": trial.metric,
        "restarts": trial.restarts,
    }
    if full:
        shown |= {
            "attempt": trial.attempt,
            "latest_checkpoint": trial.latest_checkpoint,
            "worker_id": trial.worker_id,
        }
    return shown


def summary_json(summary: ExperimentSummary) -> str:
    return json.dumps(
        {
            "experiment_id": summary.experiment_id,
            "state": summary.state,
            "trials": [trial_json(t) for t in summary.trials],
            "best_trial": trial_json(summary.best_trial) if summary.best_trial else None,
            "event_log": summary.event_log,
        }
    )


def _metric(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _trials_table(summary: ExperimentSummary, title: str) -> Table:
    table = Table(title=title)
    for column in ("trial", "state", "length", "metric", "restarts", "hyperparameters"):
        table.add_column(
            column, justify="left" if column in ("state", "hyperparameters") else "right"
        )
    best = summary.best_trial.trial_id if summary.best_trial else None
    for trial in summary.trials:
        mark = " *" if trial.trial_id == best else ""
        table.add_row(
            f"{trial.trial_id}{mark}",
            trial.state,
            str(trial.length),
            _metric(trial.metric),
            str(trial.restarts),
            json.dumps(trial.hparams, sort_keys=True),
        )
    return table


def trials_table(summary: ExperimentSummary) -> Table:
    return _trials_table(summary, f"experiment {summary.experiment_id}: {summary.state}")


def progress_view(summary: ExperimentSummary) -> Group:
    """A progress bar over the table: trials done, best so far, what runs and how far."""
    done = sum(t.state in FINAL_TRIAL_STATES for t in summary.trials)
    running = [t for t in summary.trials if t.state == "RUNNING"]
    best = summary.best_trial
    line = Text(
        f"{summary.progress:4.0%}  {done}/{len(summary.trials)} trials done"
        + (f"  best: trial {best.trial_id} = {_metric(best.metric)}" if best else "")
        + (
            "  running: " + ", ".join(f"{t.trial_id}@{t.length}" for t in running)
            if running
            else ""
        )
    )
    bar = ProgressBar(total=1.0, completed=summary.progress, width=40)
    return Group(bar, line, progress_table(summary))


def experiments_table(summaries: Sequence[ExperimentSummary]) -> Table:
    table = Table(title="experiments")
    for column in ("experiment", "name", "state", "progress", "labels"):
        table.add_column(column)
    for summary in summaries:
        table.add_row(
            summary.experiment_id,
            summary.name or "",
            summary.state,
            f"{summary.progress:.0%}",
            ", ".join(summary.labels),
        )
    return table


def checkpoints_table(checkpoints: Sequence[Checkpoint]) -> Table:
    table = Table(title="checkpoints")
    for column in ("trial", "attempt", "steps", "uuid", "size"):
        table.add_column(column, justify="left" if column == "uuid" else "right")
    for checkpoint in checkpoints:
        table.add_row(
            str(checkpoint.trial_id),
            str(checkpoint.attempt),
            str(checkpoint.steps_completed),
            checkpoint.uuid,
            f"{checkpoint.size_bytes:,} B",
        )
    return table


def workers_table(workers: Sequence[WorkerInfo]) -> Table:
    table = Table(title="workers")
    for column in ("worker", "slots", "free", "gpus", "running", "last heard"):
        table.add_column(column)
    for worker in workers:
        heard = f"{worker.last_seen_s:.1f} s ago" + (" (lost)" if worker.lost else "")
        table.add_row(
            worker.worker_id,
            str(worker.slots),
            str(worker.free_slots),
            ",".join(worker.gpus) or "-",
            "\n".join(worker.running) or "-",
            heard,
        )
    return table


def print_trial(trial: TrialSummary, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"trial {trial.trial_id}", show_header=False)
    for key, value in trial_json(trial, full=True).items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


def progress_table(summary: ExperimentSummary) -> Table:
    counts: dict[str, int] = {}
    for trial in summary.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    best = summary.best_trial
    best_text = (
        f"best so far: trial {best.trial_id}, metric {_metric(best.metric)} at length {best.length}"
        if best
        else "best so far: none yet"
    )
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return _trials_table(
        summary,
        f"{summary.experiment_id} {summary.state} {summary.progress:.0%} | {states} | {best_text}",
    )


def print_summary(summary: ExperimentSummary, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_trials_table(summary, f"experiment {summary.experiment_id}: {summary.state}"))
    best = summary.best_trial
    if best is not None:
        console.print(
            f"best trial: {best.trial_id}, metric {_metric(best.metric)} at length "
            f"{best.length}, hyperparameters {json.dumps(best.hparams)}"
        )
    console.print(f"event log: {summary.event_log}")
