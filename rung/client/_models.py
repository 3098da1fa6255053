"""What the client returns: typed, frozen models.

``ExperimentSummary``, ``TrialSummary`` and ``WorkerInfo`` are the searcher's own reply
models (``broker.schemas``); the rest are read from an experiment's event log (``Clone``
and its ``Change``s as the searcher logged them, in a ``Create`` operation).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from rung.broker.schemas import ExperimentSummary, TrialSummary, WorkerInfo
from rung.searcher.eventlog import Record
from rung.searcher.ops import Change, Clone

__all__ = [
    "Change",
    "Checkpoint",
    "Clone",
    "Event",
    "ExperimentSummary",
    "LogEntry",
    "MetricReport",
    "TrialSummary",
    "WorkerInfo",
]

# One record of an experiment's event log: what ``Experiment.watch()`` yields.
Event = Record


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Checkpoint(_Model):
    """A checkpoint a trial reported as saved (it is complete on storage)."""

    uuid: str
    experiment_id: str
    trial_id: int
    attempt: int
    steps_completed: int
    metadata: dict[str, JsonValue]
    size_bytes: int
    reported_at: float  # seconds since the epoch, when the searcher logged it


class MetricReport(_Model):
    """One ``report_training_metrics`` or ``report_validation_metrics`` call."""

    experiment_id: str
    trial_id: int
    attempt: int
    group: Literal["training", "validation"]
    steps_completed: int
    metrics: dict[str, JsonValue]
    reported_at: float


class LogEntry(_Model):
    """One line a trial's process wrote (``stream`` is stdout or stderr), or a line Rung
    added about it (``stream`` rung)."""

    experiment_id: str
    trial_id: int
    attempt: int
    stream: str
    text: str
    rank: int | None = None  # the process's rank, in a distributed trial
