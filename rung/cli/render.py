"""How experiments look in the terminal and as JSON."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from broker.schemas import ExperimentSummary, TrialSummary

__all__ = ["print_summary", "progress_table", "summary_json"]


def _trial_json(trial: TrialSummary) -> dict[str, Any]:
    return {
        "trial_id": trial.trial_id,
        "hparams": trial.hparams,
        "state": trial.state,
        "length": trial.length,
        "metric": trial.metric,
        "restarts": trial.restarts,
    }


def summary_json(summary: ExperimentSummary) -> str:
    return json.dumps(
        {
            "experiment_id": summary.experiment_id,
            "state": summary.state,
            "trials": [_trial_json(t) for t in summary.trials],
            "best_trial": _trial_json(summary.best_trial) if summary.best_trial else None,
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
