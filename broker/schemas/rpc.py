"""Requests from clients (and workers fetching contexts) to the searcher, and replies."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StrictBool,
    model_serializer,
)

from rung.broker.limits import CONTEXT_HASH_PATTERN, MAX_RANK
from rung.broker.schemas.base import Message, without_none

__all__ = [
    "ControlExperiment",
    "ControlTrial",
    "CreateExperiment",
    "DescribeExperiment",
    "ExperimentSummary",
    "GetContext",
    "ListExperiments",
    "ListWorkers",
    "ReadRecords",
    "ReadTrialLogs",
    "ResendCommand",
    "RpcError",
    "RpcReply",
    "RpcRequest",
    "TrialSummary",
    "WorkerInfo",
]


class CreateExperiment(Message):
    type: Literal["create_experiment"] = "create_experiment"
    config: dict[str, Any]
    # The context directory as a gzip'd tar, base64-encoded.
    context_b64: str
    config_source: str = ""
    # Names the request: a create sent again with the same key (a retry) answers with
    # the experiment the first one made. Empty: the request's message id names it.
    request_key: str = Field(default="", max_length=200)


class DescribeExperiment(Message):
    """``trials=False``: the summary without its trials (state, progress, best trial,
    waiting reasons): what a waiter polls, a small reply that costs the searcher a
    fraction of the whole one (0.03 s against 0.2 s at 10,000 trials). Written only when
    False, so a request for everything reads as before."""

    type: Literal["describe_experiment"] = "describe_experiment"
    experiment_id: str
    trials: StrictBool = True

    @model_serializer(mode="wrap")
    def _trials_only_when_left_out(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("trials") is True:
            del data["trials"]
        return data


class ListExperiments(Message):
    type: Literal["list_experiments"] = "list_experiments"


class ControlExperiment(Message):
    """A user's pause, activate, cancel (graceful: trials checkpoint) or kill (at once)."""

    type: Literal["control_experiment"] = "control_experiment"
    experiment_id: str
    action: Literal["pause", "activate", "cancel", "kill"]


class ControlTrial(Message):
    """A user's kill of one trial: its process is killed, and the search goes on."""

    type: Literal["control_trial"] = "control_trial"
    experiment_id: str
    trial_id: int
    action: Literal["kill"] = "kill"


class ReadRecords(Message):
    """Records of an experiment's event log after ``after_seq``, at most ``limit``."""

    type: Literal["read_records"] = "read_records"
    experiment_id: str
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=10_000)


class ReadTrialLogs(Message):
    """Lines a trial's processes wrote (kept apart from the event log), at most ``limit``;
    every trial's with ``trial_id`` None; only rank ``rank``'s with it. ``after`` is the
    cursor in the experiment's trial log store (0: from its start; then the reply's
    ``next``). An experiment from
    before the store also has lines in its event log's ``log_lines`` records: they come
    first, after record ``after_seq`` (then the reply's ``next_seq``)."""

    type: Literal["read_trial_logs"] = "read_trial_logs"
    experiment_id: str
    trial_id: int | None = Field(default=None, ge=1)
    after: int = Field(default=0, ge=0)
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=10_000)
    rank: int | None = Field(default=None, ge=0, le=MAX_RANK)

    @model_serializer(mode="wrap")
    def _rank_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_none(handler(self), "rank")


class ListWorkers(Message):
    type: Literal["list_workers"] = "list_workers"


class GetContext(Message):
    type: Literal["get_context"] = "get_context"
    context_hash: str = Field(pattern=CONTEXT_HASH_PATTERN)


class ResendCommand(Message):
    """An operator's (``rung dlq requeue``) ask to publish again a command the searcher
    logged: the one named by its message id ``<experiment id>/<seq>/<index>``, exactly as
    the outbox first sent it. Only the searcher writes the commands exchange."""

    type: Literal["resend_command"] = "resend_command"
    message_id: str = Field(min_length=1, max_length=300)


RpcRequest = Annotated[
    CreateExperiment
    | DescribeExperiment
    | ListExperiments
    | GetContext
    | ControlExperiment
    | ControlTrial
    | ReadRecords
    | ReadTrialLogs
    | ListWorkers
    | ResendCommand,
    Discriminator("type"),
]


class TrialSummary(Message):
    trial_id: int
    request_id: str
    hparams: dict[str, JsonValue]
    state: str
    length: int
    metric: float | None
    restarts: int
    attempt: int
    latest_checkpoint: str | None
    worker_id: str | None
    # Population-based training: where the trial comes from (its ``Create.clone``: the
    # source trial, the checkpoint and its length, the rank, each hyperparameter's
    # change), as JSON; None for a trial that started afresh, and then left out, so
    # that a summary without clones reads as before.
    lineage: dict[str, JsonValue] | None = None

    @model_serializer(mode="wrap")
    def _lineage_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        return without_none(handler(self), "lineage")


class ExperimentSummary(Message):
    experiment_id: str
    name: str | None
    state: str
    progress: float
    trials: list[TrialSummary]
    best_trial: TrialSummary | None
    event_log: str
    warnings: list[str] = Field(default_factory=list)
    message: str = ""
    labels: list[str] = Field(default_factory=list)
    description: str | None = None
    # The validated broker user that created it (None where no broker vouches for one).
    owner: str | None = None
    # Why trials wait although workers are free, e.g. "trial 3 needs 8 slots; the largest
    # worker has 4".
    waiting: list[str] = Field(default_factory=list)


class WorkerInfo(Message):
    """A worker as the searcher last heard from it."""

    worker_id: str
    slots: int
    free_slots: int
    gpus: list[str]
    running: list[str]  # experiment/trial/attempt of each trial it runs
    last_seen_s: float  # seconds since anything was heard from it
    lost: bool  # silent for longer than the searcher's --worker-timeout


class RpcError(Message):
    kind: Literal["refused", "not_found", "internal"]
    message: str
    problems: list[str] = Field(default_factory=list)
    # For a refused config: the field each problem is about ("" for the whole config).
    paths: list[str] = Field(default_factory=list)


class RpcReply(Message):
    type: Literal["rpc_reply"] = "rpc_reply"
    ok: bool
    result: dict[str, Any] | None = None
    error: RpcError | None = None
