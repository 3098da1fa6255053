"""The envelope around every message, and the codec that checks it on the way in.

Decoding fails loudly: a :class:`~broker.errors.DecodeError` names the rule that was
broken (not JSON, wrong schema version, unknown type, a bad field, too large).
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal

from pydantic import Discriminator, Field, TypeAdapter, ValidationError

from rung.broker.errors import DecodeError
from rung.broker.schemas.base import Message
from rung.broker.schemas.commands import (
    CloseTrial,
    ContinueTrial,
    DeleteCheckpoints,
    KillTrial,
    PauseTrial,
    PreemptTrial,
    RunTrial,
)
from rung.broker.schemas.events import (
    CheckpointSaved,
    LogLines,
    MetricsReported,
    OpCompleted,
    ProgressReported,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
)
from rung.broker.schemas.rpc import (
    ControlExperiment,
    ControlTrial,
    CreateExperiment,
    DescribeExperiment,
    GetContext,
    ListExperiments,
    ListWorkers,
    ReadRecords,
    ReadTrialLogs,
    RpcReply,
)

__all__ = ["MAX_MESSAGE_BYTES", "SCHEMA_VERSION", "Body", "Envelope", "decode", "encode"]

SCHEMA_VERSION: Final = 1
# Far below RabbitMQ's 128 MiB: a message this large is a bug, or an oversized context.
MAX_MESSAGE_BYTES = 96 * 1024 * 1024

Body = Annotated[
    RunTrial
    | ContinueTrial
    | PauseTrial
    | CloseTrial
    | PreemptTrial
    | KillTrial
    | DeleteCheckpoints
    | TrialStarted
    | ProgressReported
    | MetricsReported
    | OpCompleted
    | CheckpointSaved
    | TrialExited
    | LogLines
    | WorkerHeartbeat
    | WorkerLost
    | CreateExperiment
    | DescribeExperiment
    | ListExperiments
    | GetContext
    | ControlExperiment
    | ControlTrial
    | ReadRecords
    | ReadTrialLogs
    | ListWorkers
    | RpcReply,
    Discriminator("type"),
]


class Envelope(Message):
    """``message_id`` is deterministic, so a re-sent message is recognised as a duplicate."""

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(min_length=1)
    experiment_id: str = ""
    seq: int = Field(default=0, ge=0)
    body: Body


_ADAPTER: TypeAdapter[Envelope] = TypeAdapter(Envelope)


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode(data: bytes) -> Envelope:
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message too large: {len(data)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DecodeError(f"expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"unsupported schema_version {version!r}; this Rung speaks version {SCHEMA_VERSION}"
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DecodeError(
            f"invalid message at {where or 'top level'}: {first['msg']} "
            f"({exc.error_count()} problem(s))"
        ) from None
