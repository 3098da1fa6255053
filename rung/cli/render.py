"""How experiments look in the terminal and as JSON.

Every string that comes from a user or the wire (names, ids, labels, hyperparameters,
messages, log lines) reaches rich as a :class:`~rich.text.Text`, never as markup: an
experiment named ``[/]`` or ``[link=...]`` shows as written. Control characters (an
escape sequence that would move the cursor, retitle the terminal or hide text) are shown
as ``\\xNN`` (:func:`safe_text`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rung.broker.schemas import ExperimentSummary, TrialSummary, WorkerInfo
from rung.client import Checkpoint, Clone

__all__ = [
    "checkpoints_table",
    "console_text",
    "experiments_table",
    "print_summary",
    "print_trial",
    "progress_table",
    "progress_view",
    "safe_text",
    "summary_json",
    "trial_json",
    "trials_table",
    "waiting_lines",
    "workers_table",
    "workers_view",
]

FINAL_TRIAL_STATES = ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP")
# C0 controls but tab and newline, DEL, C1 controls, the line and paragraph separators,
# and the bidirectional marks and overrides that can make shown text read other than it is.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def safe_text(value: object, *, newlines: bool = True) -> str:
    """``value`` as text that a terminal shows as written: each control character as
    ``\\xNN`` (``\\uNNNN``); with ``newlines=False`` newlines and tabs too."""
    text = str(value)
    shown = _CONTROL.sub(_escape_char, text)
    return shown if newlines else shown.replace("\n", "\\n").replace("\t", "\\t")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def console_text(value: object, stream: TextIO | None = None) -> str:
    """``value`` for printing to ``stream`` (stdout): made safe when it is a terminal,
    as written when it is a pipe or a file (where the bytes are the user's to keep)."""
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    return safe_text(value) if isatty is not None and isatty() else str(value)


def _t(value: object) -> Text:
    """A table cell or title: never markup, never a control character."""
    return Text(safe_text(value))


def trial_json(trial: TrialSummary, *, full: bool = False) -> dict[str, Any]:
    shown = {
        "trial_id": trial.trial_id,
        "hparams": trial.hparams,
        "state": trial.state,
        "length": trial.length,
        "metric": trial.metric,
        "restarts": trial.restarts,
        # Population-based training: the trial it copies, or null (cli.md#lineage).
        "lineage": trial.lineage,
    }
    if full:
        shown |= {
            "attempt": trial.attempt,
            "latest_checkpoint": trial.latest_checkpoint,
            "worker_id": trial.worker_id,
        }
    return shown


def summary_json(summary: ExperimentSummary) -> str:
    """The experiment as JSON; each trial with its parent (``lineage``: the clone record
    the searcher logged, or null for a trial that started afresh)."""

    return json.dumps(
        {
            "experiment_id": summary.experiment_id,
            "name": summary.name,
            "owner": summary.owner,
            "state": summary.state,
            "message": summary.message,
            "waiting": summary.waiting,
            "trials": [trial_json(t) for t in summary.trials],
            "best_trial": trial_json(summary.best_trial) if summary.best_trial else None,
            "event_log": summary.event_log,
        }
    )


def _metric(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _trials_table(
    summary: ExperimentSummary, title: str, lineage: Mapping[int, Clone] | None = None
) -> Table:
    """The trials; with a ``from`` column ("trial 3 @ 40": the trial and checkpoint
    length a clone continues from) when any trial is a clone."""
    table = Table(title=_t(title))
    clones = lineage or {}
    columns = ["trial", "state", "length", "metric", "restarts", "hyperparameters"]
    if clones:
        columns.insert(1, "from")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("from", "state", "hyperparameters") else "right"
        )
    best = summary.best_trial.trial_id if summary.best_trial else None
    for trial in summary.trials:
        mark = " *" if trial.trial_id == best else ""
        cells = [
            _t(f"{trial.trial_id}{mark}"),
            _t(trial.state),
            _t(trial.length),
            _t(_metric(trial.metric)),
            _t(trial.restarts),
            _t(json.dumps(trial.hparams, sort_keys=True)),
        ]
        if clones:
            clone = clones.get(trial.trial_id)
            source = "" if clone is None else f"trial {clone.source_trial} @ {clone.length}"
            cells.insert(1, _t(source))
        table.add_row(*cells)
    return table


def trials_table(summary: ExperimentSummary) -> Table:
    return _trials_table(summary, f"experiment {summary.experiment_id}: {summary.state}")


def progress_view(summary: ExperimentSummary) -> Group:
    """A progress bar over the table: trials done, best so far, what runs and how far."""
    done = sum(t.state in FINAL_TRIAL_STATES for t in summary.trials)
    running = [t for t in summary.trials if t.state == "RUNNING"]
    best = summary.best_trial
    line = _t(
        f"{summary.progress:4.0%}  {done}/{len(summary.trials)} trials done"
        + (f"  best: trial {best.trial_id} = {_metric(best.metric)}" if best else "")
        + (
            "  running: " + ", ".join(f"{t.trial_id}@{t.length}" for t in running)
            if running
            else ""
        )
    )
    bar = ProgressBar(total=1.0, completed=summary.progress, width=40)
    return Group(bar, line, *waiting_lines(summary), progress_table(summary))


def experiments_table(summaries: Sequence[ExperimentSummary]) -> Table:
    table = Table(title="experiments")
    for column in ("experiment", "name", "state", "progress", "labels"):
        table.add_column(column)
    for summary in summaries:
        table.add_row(
            _t(summary.experiment_id),
            _t(summary.name or ""),
            _t(summary.state),
            _t(f"{summary.progress:.0%}"),
            _t(", ".join(summary.labels)),
        )
    return table


def checkpoints_table(checkpoints: Sequence[Checkpoint]) -> Table:
    table = Table(title="checkpoints")
    for column in ("trial", "attempt", "steps", "uuid", "size"):
        table.add_column(column, justify="left" if column == "uuid" else "right")
    for checkpoint in checkpoints:
        table.add_row(
            _t(checkpoint.trial_id),
            _t(checkpoint.attempt),
            _t(checkpoint.steps_completed),
            _t(checkpoint.uuid),
            _t(f"{checkpoint.size_bytes:,} B"),
        )
    return table


def workers_table(workers: Sequence[WorkerInfo]) -> Table:
    table = Table(title="workers")
    for column in ("worker", "slots", "free", "gpus", "running", "last heard"):
        table.add_column(column)
    for worker in workers:
        heard = f"{worker.last_seen_s:.1f} s ago" + (" (lost)" if worker.lost else "")
        table.add_row(
            _t(worker.worker_id),
            _t(worker.slots),
            _t(worker.free_slots),
            _t(",".join(safe_text(g, newlines=False) for g in worker.gpus) or "-"),
            _t("\n".join(safe_text(r, newlines=False) for r in worker.running) or "-"),
            _t(heard),
        )
    return table


def waiting_lines(summary: ExperimentSummary) -> list[Text]:
    """Why the experiment's trials wait (no live worker can fit them), one line each."""
    return [_t(f"waiting: {reason}") for reason in summary.waiting]


def workers_view(
    workers: Sequence[WorkerInfo], summaries: Sequence[ExperimentSummary] = ()
) -> Group:
    """The workers, and under them the trials that none of them can fit."""
    lines = [
        _t(f"{summary.experiment_id} ({summary.name or 'unnamed'}): {reason}")
        for summary in summaries
        for reason in summary.waiting
    ]
    if lines:
        lines.insert(0, _t("trials no worker can fit:"))
    return Group(workers_table(workers), *lines)


def print_trial(trial: TrialSummary, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=_t(f"trial {trial.trial_id}"), show_header=False)
    for key, value in trial_json(trial, full=True).items():
        table.add_row(_t(key), _t(json.dumps(value) if isinstance(value, dict) else value))
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


def print_summary(
    summary: ExperimentSummary,
    console: Console | None = None,
    *,
    lineage: Mapping[int, Clone] | None = None,
) -> None:
    """The trials (each clone with the trial it continues from, given the ``lineage``),
    the experiment's message, why trials wait, the best trial and the event log."""
    console = console or Console()
    title = f"experiment {summary.experiment_id}: {summary.state}"
    console.print(_trials_table(summary, title, lineage))
    if summary.message:
        console.print(_t(summary.message))
    for line in waiting_lines(summary):
        console.print(line)
    best = summary.best_trial
    if best is not None:
        console.print(
            _t(
                f"best trial: {best.trial_id}, metric {_metric(best.metric)} at length "
                f"{best.length}, hyperparameters {json.dumps(best.hparams)}"
            )
        )
    console.print(_t(f"event log: {summary.event_log}"))
