"""Events from workers (and their training processes) to the searcher.

Each names the trial's ``attempt``: the searcher drops events from an attempt that is not
the trial's current one, which fences off a worker that was presumed dead.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from rung.broker.limits import MAX_RANK, START_TOKEN_PATTERN, UUID_PATTERN
from rung.broker.schemas.base import Message, without_none
from rung.broker.schemas.gang import ADDRESS_PATTERN, SlotsReserved

__all__ = [
    "MAX_PARTS_SHOWN",
    "CheckpointSaved",
    "ExitReason",
    "LogLine",
    "LogLines",
    "MetricsReported",
    "OpCompleted",
    "PartState",
    "ProgressReported",
    "RoundTimeout",
    "SlotsReserved",
    "TrialEvent",
    "TrialExited",
    "TrialStarted",
    "WorkerHeartbeat",
    "WorkerLost",
]


class ExitReason(StrEnum):
    """How a training process ended, with Determined's meanings."""

    # Exited cleanly after the searcher closed the trial: the trial is done.
    COMPLETED = "COMPLETED"
    # Exited cleanly after the searcher paused it: not a completion, it may resume later.
    OUT_OF_OPS = "OUT_OF_OPS"
    # Exited after a preemption request: it resumes from its checkpoint elsewhere.
    PREEMPTED = "PREEMPTED"
    # A non-zero exit or a crash; counts against max_restarts.
    ERRORED = "ERRORED"
    # The script raised InvalidHP: the search method replaces the trial.
    INVALID_HP = "INVALID_HP"
    # Exited 0 without finishing its operation: a user-requested stop, never restarted.
    USER_REQUESTED_STOP = "USER_REQUESTED_STOP"


class _TrialMessage(Message):
    experiment_id: str
    trial_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    # The worker running this attempt: events from any other worker are ignored.
    worker_id: str


class TrialStarted(_TrialMessage):
    type: Literal["trial_started"] = "trial_started"
    slots: int = Field(ge=0)
    gpus: list[str] = Field(default_factory=list)
    # The ``start_token`` of the ``run_trial`` this process was started for, echoed:
    # a start whose token is not its attempt's is ignored (None: the run_trial had none).
    start_token: str | None = Field(default=None, pattern=START_TOKEN_PATTERN)


class ProgressReported(_TrialMessage):
    type: Literal["progress_reported"] = "progress_reported"
    units: float = Field(ge=0, allow_inf_nan=False)


class MetricsReported(_TrialMessage):
    type: Literal["metrics_reported"] = "metrics_reported"
    group: Literal["training", "validation"]
    steps_completed: int = Field(ge=0)
    metrics: dict[str, JsonValue]


class OpCompleted(_TrialMessage):
    """The script trained to ``length`` and reported the searcher metric."""

    type: Literal["op_completed"] = "op_completed"
    length: int = Field(ge=1)
    metric: float | None

    @field_validator("metric")
    @classmethod
    def _finite_or_none(cls, value: float | None) -> float | None:
        # JSON has no NaN: a non-finite metric travels as null and ranks worst.
        return value if value is None or math.isfinite(value) else None


class CheckpointSaved(_TrialMessage):
    type: Literal["checkpoint_saved"] = "checkpoint_saved"
    uuid: str = Field(pattern=UUID_PATTERN)
    steps_completed: int = Field(ge=0)
    metadata: dict[str, JsonValue]
    size_bytes: int = Field(ge=0)


class TrialExited(_TrialMessage):
    type: Literal["trial_exited"] = "trial_exited"
    reason: ExitReason
    exit_code: int | None = None
    message: str = ""
    stderr_tail: list[str] = Field(default_factory=list)


class LogLine(Message):
    """One line; ``rank`` is the process's rank in a distributed trial, where the line
    came tagged with it (``[rank=N] ``, rung.launch.wrap_rank), the tag taken off."""

    stream: Literal["stdout", "stderr", "rung"]
    text: str
    rank: int | None = Field(default=None, ge=0, le=MAX_RANK)

    @model_serializer(mode="wrap")
    def _rank_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_none(handler(self), "rank")


class LogLines(_TrialMessage):
    type: Literal["log_lines"] = "log_lines"
    lines: list[LogLine]


# A worker's part of a trial on several workers, as its heartbeat shows it.
PartState = Literal["held", "running", "ended"]
# The most parts a heartbeat shows: its held and running ones (at most one a slot) and
# the last ended ones.
MAX_PARTS_SHOWN = 256


class WorkerHeartbeat(Message):
    type: Literal["worker_heartbeat"] = "worker_heartbeat"
    experiment_id: str = ""
    worker_id: str
    slots: int = Field(ge=0)
    free_slots: int = Field(ge=0)
    gpus: list[str] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)
    # Where other machines reach this worker (a trial's ranks on other workers dial its
    # chief here); None from a worker of the version before gangs, which gets no part.
    address: str | None = Field(default=None, pattern=ADDRESS_PATTERN)
    # Its parts of trials on several workers, by attempt (``<experiment>/<trial>/<attempt>``):
    # ``held`` (slots reserved, not started), ``running``, or ``ended`` lately (its exit
    # may still be on its way). The searcher gives back what it no longer asks for, and
    # finds a part whose command was lost (searcher.service.gangwatch). None when it has
    # none (and from a worker of the version before gangs).
    parts: dict[str, PartState] | None = Field(default=None, max_length=MAX_PARTS_SHOWN)

    @model_serializer(mode="wrap")
    def _address_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_none(handler(self), "address", "parts")


class WorkerLost(Message):
    """The searcher's own timer input, never sent by a worker: ``worker_id`` has sent
    nothing (no heartbeat, no event) for ``silent_s`` seconds, so its trials are lost."""

    type: Literal["worker_lost"] = "worker_lost"
    experiment_id: str
    worker_id: str
    silent_s: float = Field(ge=0)


class RoundTimeout(Message):
    """The searcher's own timer input, never sent by a worker: round ``round`` of the
    experiment's search (population-based training, synchronous mode) has been open for
    ``after_s`` seconds, its ``searcher.round_timeout``."""

    type: Literal["round_timeout"] = "round_timeout"
    experiment_id: str
    round: int = Field(ge=0)
    after_s: float = Field(ge=0, allow_inf_nan=False)


TrialEvent = Annotated[
    TrialStarted
    | ProgressReported
    | MetricsReported
    | OpCompleted
    | CheckpointSaved
    | TrialExited
    | LogLines
    | SlotsReserved
    | WorkerHeartbeat,
    Discriminator("type"),
]
