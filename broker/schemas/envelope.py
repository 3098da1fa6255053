"""The envelope around every message, and the codec that checks it on the way in.

Decoding fails loudly: a :class:`~broker.errors.DecodeError` names the rule that was
broken (too large, nested too deeply, not JSON, wrong schema version, unknown type, a bad
field). Any failure at all while decoding is a ``DecodeError``, so a consumer dead-letters
the message instead of failing on it again and again. Encoding refuses an envelope over
:data:`~rung.broker.limits.MAX_MESSAGE_BYTES` (:class:`~broker.errors.MessageTooLargeError`)
before the broker would close the publisher's channel for it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Final, Literal, NoReturn

from pydantic import Discriminator, Field, TypeAdapter, ValidationError

from rung.broker.errors import DecodeError, MessageTooLargeError
from rung.broker.limits import MAX_JSON_DEPTH, MAX_MESSAGE_BYTES
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
    RoundTimeout,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
)
from rung.broker.schemas.gang import GangPlanned, ReserveSlots, SlotsReserved
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
    ResendCommand,
    RpcReply,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "Body",
    "Envelope",
    "check_json_depth",
    "decode",
    "encode",
]

SCHEMA_VERSION: Final = 1

Body = Annotated[
    RunTrial
    | ContinueTrial
    | PauseTrial
    | CloseTrial
    | PreemptTrial
    | KillTrial
    | DeleteCheckpoints
    | ReserveSlots
    | TrialStarted
    | ProgressReported
    | MetricsReported
    | OpCompleted
    | CheckpointSaved
    | TrialExited
    | LogLines
    | WorkerHeartbeat
    | WorkerLost
    | RoundTimeout
    | GangPlanned
    | SlotsReserved
    | CreateExperiment
    | DescribeExperiment
    | ListExperiments
    | GetContext
    | ControlExperiment
    | ControlTrial
    | ReadRecords
    | ReadTrialLogs
    | ListWorkers
    | ResendCommand
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
    """The envelope as JSON; refused (:class:`MessageTooLargeError`) over
    :data:`MAX_MESSAGE_BYTES`, which the shipped brokers accept with room to spare."""
    data = envelope.model_dump_json().encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"{envelope.body.type} message is {len(data)} bytes, over the "
            f"{MAX_MESSAGE_BYTES} byte limit (MAX_MESSAGE_BYTES); send less in one message"
        )
    return data


# A JSON string (escapes included), and every byte that is not a bracket.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TO_PARENS = bytes.maketrans(b"[]{}", b"()()")


def check_json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON that nests deeper than ``limit`` (:class:`DecodeError`), before a parser
    recurses into it. Linear in C: strings are cut out, the brackets kept, and innermost
    pairs removed ``limit`` times; whatever is left nests deeper (or is unbalanced,
    which is not JSON either)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    brackets = _JSON_STRING.sub(b"", data).translate(_TO_PARENS, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return
        brackets = brackets.replace(b"()", b"")
    if brackets:
        raise DecodeError(
            f"JSON nests deeper than {limit} levels (MAX_JSON_DEPTH), or its brackets do "
            "not balance; send flatter data"
        )


def _refuse_constant(name: str) -> NoReturn:
    raise DecodeError(f"not valid JSON: {name} is not a JSON number (RFC 8259); send null")


def decode(data: bytes) -> Envelope:
    """The envelope in ``data``; any problem at all is a :class:`DecodeError` naming it."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(
            f"message too large: {len(data)} bytes, over the {MAX_MESSAGE_BYTES} byte limit "
            "(MAX_MESSAGE_BYTES)"
        )
    try:
        return _decode(data)
    except DecodeError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (RecursionError, MemoryError, OverflowError...)
        raise DecodeError(f"cannot decode message: {type(exc).__name__}: {exc}") from None


def _decode(data: bytes) -> Envelope:
    check_json_depth(data)
    raw = json.loads(data, parse_constant=_refuse_constant)
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
