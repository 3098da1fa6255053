"""Search events: what happened to trials, as the experiment layer consumes them.

These are the pure core's inputs. The service (and the simulator) turn worker messages
into them; time never enters the core except as a field of an event.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, TypeAdapter

__all__ = [
    "ExitedReason",
    "RoundTimedOut",
    "SearchEvent",
    "Start",
    "TrialCheckpointed",
    "TrialClosed",
    "TrialExitedEarly",
    "TrialPaused",
    "TrialProgress",
    "ValidationCompleted",
    "events_adapter",
]


class ExitedReason(StrEnum):
    """Why a trial ended before the searcher closed it.

    Only ERRORED counts as a failure, and only USER_CANCELED as a cancel.
    USER_REQUESTED_STOP is a script that exited cleanly without finishing its operation:
    as in Determined, the trial simply ended, and the experiment can still complete.
    """

    ERRORED = "ERRORED"
    USER_CANCELED = "USER_CANCELED"
    INVALID_HP = "INVALID_HP"
    USER_REQUESTED_STOP = "USER_REQUESTED_STOP"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Start(_Event):
    """The experiment begins: the method emits its initial operations."""

    type: Literal["start"] = "start"


class ValidationCompleted(_Event):
    """A trial finished ``ValidateAfter(request_id, length)`` and reported its metric.

    ``metric`` is None or non-finite when the script reported nothing usable; such a
    result ranks worst instead of failing the experiment (a Determined 0.38 pitfall).
    """

    type: Literal["validation_completed"] = "validation_completed"
    request_id: str
    length: int = Field(ge=1)
    metric: float | None


class TrialClosed(_Event):
    """The trial's process ended after the searcher closed it."""

    type: Literal["trial_closed"] = "trial_closed"
    request_id: str


class TrialExitedEarly(_Event):
    """The trial ended for good before the searcher closed it."""

    type: Literal["trial_exited_early"] = "trial_exited_early"
    request_id: str
    reason: ExitedReason


class TrialProgress(_Event):
    """How far the trial has trained, in units of ``searcher.max_length``."""

    type: Literal["trial_progress"] = "trial_progress"
    request_id: str
    units: float = Field(ge=0, allow_inf_nan=False)


class TrialCheckpointed(_Event):
    """The trial saved a checkpoint at ``steps``. Given only to methods that follow
    checkpoints (``SearchMethod.follows_checkpoints``: population-based training)."""

    type: Literal["trial_checkpointed"] = "trial_checkpointed"
    request_id: str
    uuid: str
    steps: int = Field(ge=0)


class TrialPaused(_Event):
    """The trial's process exited between operations (it holds none): it saves no more
    checkpoints until it runs again. Given only to methods that follow checkpoints."""

    type: Literal["trial_paused"] = "trial_paused"
    request_id: str


class RoundTimedOut(_Event):
    """A round of the search (population-based training's synchronous mode) has been
    open ``after_s`` seconds, its limit: the service's timer, logged like any input."""

    type: Literal["round_timed_out"] = "round_timed_out"
    round: int = Field(ge=0)
    after_s: float = Field(ge=0, allow_inf_nan=False)


SearchEvent = Annotated[
    Start
    | ValidationCompleted
    | TrialClosed
    | TrialExitedEarly
    | TrialProgress
    | TrialCheckpointed
    | TrialPaused
    | RoundTimedOut,
    Discriminator("type"),
]

events_adapter: TypeAdapter[SearchEvent] = TypeAdapter(SearchEvent)
