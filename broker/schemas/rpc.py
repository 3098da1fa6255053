"""Requests from clients (and workers fetching contexts) to the searcher, and replies."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, JsonValue

from broker.schemas.base import Message

__all__ = [
    "ControlExperiment",
    "CreateExperiment",
    "DescribeExperiment",
    "ExperimentSummary",
    "GetContext",
    "ListExperiments",
    "RpcError",
    "RpcReply",
    "RpcRequest",
    "TrialSummary",
]


class CreateExperiment(Message):
    type: Literal["create_experiment"] = "create_experiment"
    config: dict[str, Any]
    # The context directory as a gzip'd tar, base64-encoded.
    context_b64: str
    config_source: str = ""


class DescribeExperiment(Message):
    type: Literal["describe_experiment"] = "describe_experiment"
    experiment_id: str


class ListExperiments(Message):
    type: Literal["list_experiments"] = "list_experiments"


class ControlExperiment(Message):
    """A user's pause, activate, cancel (graceful: trials checkpoint) or kill (at once)."""

    type: Literal["control_experiment"] = "control_experiment"
    experiment_id: str
    action: Literal["pause", "activate", "cancel", "kill"]


class GetContext(Message):
    type: Literal["get_context"] = "get_context"
    context_hash: str


RpcRequest = Annotated[
    CreateExperiment | DescribeExperiment | ListExperiments | GetContext | ControlExperiment,
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


class RpcError(Message):
    kind: Literal["refused", "not_found", "internal"]
    message: str
    problems: list[str] = Field(default_factory=list)


class RpcReply(Message):
    type: Literal["rpc_reply"] = "rpc_reply"
    ok: bool
    result: dict[str, Any] | None = None
    error: RpcError | None = None
