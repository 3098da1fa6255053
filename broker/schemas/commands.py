"""Commands from the searcher to workers.

``RunTrial`` goes to the shared work queue: any worker with free slots may take it. The
rest go to the control queue of the worker that runs the trial. Every command names the
trial's ``attempt``; a worker ignores commands for an attempt it does not run, so a stale
command can never touch a newer run of the trial.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from rung.broker.limits import CONTEXT_HASH_PATTERN, START_TOKEN_PATTERN, UUID_PATTERN
from rung.broker.schemas.base import Message, without_none
from rung.broker.schemas.gang import GangPlacement, ReserveSlots

__all__ = [
    "START_TOKEN_PATTERN",
    "CloseTrial",
    "ContinueTrial",
    "DeleteCheckpoints",
    "KillTrial",
    "PauseTrial",
    "PreemptTrial",
    "ReserveSlots",
    "RunTrial",
    "SearcherCommand",
    "WorkerCommand",
]

# An attempt's start token: 32 lowercase hex digits (see ``RunTrial.start_token``).


class RunTrial(Message):
    """Start (or resume from ``latest_checkpoint``) a trial and train it to ``length``."""

    type: Literal["run_trial"] = "run_trial"
    experiment_id: str
    trial_id: int = Field(ge=1)
    request_id: str
    attempt: int = Field(ge=1)
    length: int = Field(ge=1)
    hparams: dict[str, JsonValue]
    trial_seed: int = Field(ge=0)
    latest_checkpoint: str | None = Field(default=None, pattern=UUID_PATTERN)
    context_hash: str = Field(pattern=CONTEXT_HASH_PATTERN)
    entrypoint: list[str] = Field(min_length=1)
    slots: int = Field(ge=0)
    unit: str | None = None
    checkpoint_root: str
    user_data: dict[str, JsonValue] = Field(default_factory=dict)
    max_restarts: int = Field(ge=0)
    # Where ``latest_checkpoint`` is when it is a warm start's source in another
    # experiment's root (``searcher.source_checkpoint_uuid``); None: under checkpoint_root.
    source_root: str | None = None
    # The attempt's start token: the worker that takes this command echoes it in its
    # ``trial_started``; the searcher ignores a start without it, so a worker that never
    # received this command cannot claim the attempt. None in experiments older than
    # start tokens.
    start_token: str | None = Field(default=None, pattern=START_TOKEN_PATTERN)
    # A part of a trial that runs on several workers (sent to that part's worker, never
    # to the work queues); None: the whole trial runs on the worker that takes it.
    gang: GangPlacement | None = None

    @model_serializer(mode="wrap")
    def _gang_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_none(handler(self), "gang")


class ContinueTrial(Message):
    """The trial keeps running: its next operation trains to ``length``."""

    type: Literal["continue_trial"] = "continue_trial"
    experiment_id: str
    trial_id: int
    attempt: int
    length: int = Field(ge=1)


class PauseTrial(Message):
    """No operation for now: the script exits after its last op and frees its slots."""

    type: Literal["pause_trial"] = "pause_trial"
    experiment_id: str
    trial_id: int
    attempt: int


class CloseTrial(Message):
    """The search is done with the trial: no more operations, ever."""

    type: Literal["close_trial"] = "close_trial"
    experiment_id: str
    trial_id: int
    attempt: int


class PreemptTrial(Message):
    """Ask the script to checkpoint and stop (``should_preempt()`` turns true)."""

    type: Literal["preempt_trial"] = "preempt_trial"
    experiment_id: str
    trial_id: int
    attempt: int


class KillTrial(Message):
    """Stop the process now, without a checkpoint (the experiment was killed)."""

    type: Literal["kill_trial"] = "kill_trial"
    experiment_id: str
    trial_id: int
    attempt: int


class DeleteCheckpoints(Message):
    """Delete checkpoints that the experiment's ``checkpoint_storage`` policy
    (``save_experiment_best``, ``save_trial_best``, ``save_trial_latest``) no longer keeps:
    directories ``<checkpoint_root>/<uuid>``."""

    type: Literal["delete_checkpoints"] = "delete_checkpoints"
    experiment_id: str
    checkpoint_root: str
    uuids: list[Annotated[str, Field(pattern=UUID_PATTERN)]] = Field(max_length=10_000)


# The commands about one trial attempt (DeleteCheckpoints is about an experiment's storage).
WorkerCommand = Annotated[
    RunTrial | ContinueTrial | PauseTrial | CloseTrial | PreemptTrial | KillTrial | ReserveSlots,
    Discriminator("type"),
]

# Everything the searcher decides to send: the per-attempt commands, and DeleteCheckpoints
# (to the work queue: any worker that sees the experiment's checkpoint storage runs it).
SearcherCommand = Annotated[
    RunTrial
    | ContinueTrial
    | PauseTrial
    | CloseTrial
    | PreemptTrial
    | KillTrial
    | ReserveSlots
    | DeleteCheckpoints,
    Discriminator("type"),
]
