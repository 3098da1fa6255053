"""The trial lifecycle's data: trial and run states, the commands to send, and what
one input caused (:class:`Step`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from rung.broker.schemas.commands import SearcherCommand
from rung.broker.schemas.gang import GangPart
from rung.searcher.events import (
    SearchEvent,
)
from rung.searcher.ops import Operation

__all__ = [
    "ENDED",
    "TERMINAL",
    "Command",
    "ControlAction",
    "RunState",
    "Step",
    "TrialRuntime",
    "TrialState",
]

TrialState = Literal[
    "PENDING", "QUEUED", "RUNNING", "PAUSED", "COMPLETED", "ERRORED", "CANCELED", "INVALID_HP"
]
TERMINAL = ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP")
RunState = Literal["ACTIVE", "PAUSED", "STOPPING_CANCELED", "COMPLETED", "ERROR", "CANCELED"]
ENDED: tuple[RunState, ...] = ("COMPLETED", "ERROR", "CANCELED")
ControlAction = Literal["pause", "activate", "cancel", "kill"]
_LOG_TAIL = 200


@dataclass(frozen=True, slots=True)
class Command:
    """A command to publish: to the work queue (``worker_id`` None) or to one worker.
    Only ``DeleteCheckpoints`` names no trial attempt; it always goes to the work queue."""

    body: SearcherCommand
    worker_id: str | None = None


@dataclass
class Step:
    """What one input caused: the search events applied, the operations, the commands."""

    applied: list[SearchEvent] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ignored: str | None = None
    # Why the input failed the experiment (see :meth:`ExperimentRun.fail`), or None.
    failed: str | None = None
    # What the search method said about its decisions (why it decided, or waits).
    notes: list[str] = field(default_factory=list)


class TrialRuntime(BaseModel):
    trial_id: int
    request_id: str
    state: TrialState = "PENDING"
    attempt: int = 0
    worker_id: str | None = None
    target: int | None = None  # the length of the operation it should be training to
    waiting: bool = False  # running, op done, waiting for what comes next
    stopping: Literal["pause", "close"] | None = None
    closing: bool = False
    restarts: int = 0
    latest_checkpoint: str | None = None
    latest_steps: int = -1
    # The trial's checkpoints that garbage collection has not deleted: uuid -> the
    # steps_completed it was saved at, in the order they were saved.
    checkpoints: dict[str, int] = Field(default_factory=dict)
    # The searcher metric of the trial's validations, by steps_completed: the first one
    # reported at that step (None: reported, but without a finite searcher metric).
    validations: dict[int, float | None] = Field(default_factory=dict)
    trained: int = 0
    metric: float | None = None
    validation_metrics: dict[str, Any] = Field(default_factory=dict)
    exit_message: str = ""
    # The workers running the attempt's parts when it runs on several (the chief's part
    # first; gang scheduling), from its ``gang_planned`` to the attempt's end; the parts
    # that hold their slots, and the ports the chief's part gave.
    gang: list[GangPart] | None = None
    gang_reserved: list[int] = Field(default_factory=list)
    gang_ports: dict[str, int] | None = None
    # The member parts whose processes ended cleanly while the chief's part runs on.
    gang_done: list[int] = Field(default_factory=list)
    logs: deque[str] = Field(default_factory=lambda: deque(maxlen=_LOG_TAIL))

    @field_validator("logs")
    @classmethod
    def _bounded(cls, value: deque[str]) -> deque[str]:
        return deque(value, maxlen=_LOG_TAIL)
