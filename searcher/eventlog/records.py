"""The records of an experiment's event log: versioned, numbered, typed.

* ``created``: the config (with its seed), the context's hash, the checkpoint root, the
  experiment's ``owner`` (its creator's broker-validated user; absent where no broker
  vouches for users, and in logs older than owners) and ``warm_start_root``, the root of
  the experiment that saved the warm start's source checkpoint
  (``searcher.source_checkpoint_uuid``; absent without a warm start, and in older logs)
  and ``start_secret``, the secret each trial attempt's start token is derived from
  (absent in logs older than start tokens, whose attempts take any start), and
  ``rules``, the revision of the search methods' rules it decides by (absent: 1);
* ``input``: one message the searcher handled, in the order it handled them (``input``
  is None for the experiment's start), the search events it caused (``applied``), the
  operations decided (``ops``) and the commands sent (``commands``), or why it was
  ignored; ``sender`` is the broker-validated user that published the input (absent for
  the searcher's own inputs, where no broker vouches for users, and in older logs): a
  trial attempt is bound to the user that sent its ``trial_started``, across restarts;
  ``notes`` are what the search method said about its decisions (absent when nothing);
  ``unconfirmed_from`` is the oldest earlier record whose commands the broker had not
  confirmed when this one was written (absent when none), where a restart re-sends from;
  ``failed`` is set when the input failed the experiment: its search method (or any
  code of the search) raised, and ``ops`` and ``commands`` are what the failure decided
  (the experiment ends in ERROR, its trials are killed): replay folds the failure, not
  the input. ``input`` None with ``failed``: the failure a recovering searcher found
  when folding the log raised at an input it had taken before;
* ``failed``: older logs only: an input the search method could not handle;
* ``snapshot``: the whole state after record ``seq - 1``, so a restart reads only the tail;
* ``owner``: a searcher took the log over, with a new ``epoch``; a searcher that finds a
  record it did not write stops acting on the experiment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
)

from rung.broker.schemas.commands import SearcherCommand
from rung.broker.schemas.envelope import Body
from rung.searcher.events import SearchEvent
from rung.searcher.ops import Operation

if TYPE_CHECKING:
    from rung.searcher.trials import Step

__all__ = [
    "LOG_VERSION",
    "CommandRecord",
    "CreatedRecord",
    "FailedRecord",
    "InputRecord",
    "OwnerRecord",
    "Record",
    "SnapshotRecord",
    "record_adapter",
]

LOG_VERSION: Final = 1


def _without_none(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """A record written as before the optional fields ``names`` existed, when unset."""
    for name in names:
        if data.get(name) is None:
            data.pop(name, None)
    return data


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = LOG_VERSION
    seq: int = Field(ge=1)
    # Wall-clock time of the write, for people; no decision ever reads it.
    at: float = 0.0


class CommandRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_id: str | None
    body: SearcherCommand


class CreatedRecord(_Record):
    kind: Literal["created"] = "created"
    experiment_id: str
    config: dict[str, Any]
    context_hash: str
    checkpoint_root: str
    # What named the create request (a client's key, or its message id): a create sent
    # again with the same key answers with this experiment.
    request_key: str = ""
    # The broker-validated user that created the experiment; None where no broker
    # vouches for users (an in-memory broker), and in logs older than owners.
    owner: str | None = None
    # The checkpoint root of the experiment that saved the warm start's source checkpoint
    # (``searcher.source_checkpoint_uuid``), as the searcher found it at creation; None
    # without a warm start, and in logs older than per-experiment roots.
    warm_start_root: str | None = None
    # The secret each trial attempt's start token is derived from (drawn at creation);
    # None in logs older than start tokens, whose attempts have none.
    start_secret: str | None = None
    # The revision of the built-in search methods' rules the experiment decides by
    # (rung.searcher.methods.RULES); None in logs older than it: rules 1.
    rules: int | None = Field(default=None, ge=1)

    @model_serializer(mode="wrap")
    def _without_unset_owner(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler(self), "owner", "warm_start_root", "start_secret", "rules")


class InputRecord(_Record):
    kind: Literal["input"] = "input"
    message_id: str
    input: Body | None
    applied: list[SearchEvent] = Field(default_factory=list)
    ops: list[Operation] = Field(default_factory=list)
    commands: list[CommandRecord] = Field(default_factory=list)
    ignored: str | None = None
    failed: str | None = None
    # Who published the input (the broker-validated user), where a broker vouched for it.
    sender: str | None = None
    # What the search method said about its decisions (why it decided, or waits, as it
    # does); absent when it said nothing, and in older logs.
    notes: list[str] | None = None
    # The oldest earlier record whose commands the broker had not confirmed when this one
    # was written (they may not have gone out): a restart sends every decision from there
    # on again. Absent when every earlier decision was confirmed, and in older logs.
    unconfirmed_from: int | None = Field(default=None, ge=1)

    @model_serializer(mode="wrap")
    def _without_unset_failure(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An input that failed nothing, with no sender or notes, is written as before
        # ``failed``, ``sender``, ``notes`` and ``unconfirmed_from`` existed.
        return _without_none(handler(self), "failed", "sender", "notes", "unconfirmed_from")

    @classmethod
    def of(
        cls,
        seq: int,
        message_id: str,
        body: Body | None,
        step: Step,
        at: float = 0.0,
        *,
        sender: str | None = None,
        unconfirmed_from: int | None = None,
    ) -> InputRecord:
        """The record of one handled input and everything it caused; ``sender`` is the
        broker-validated user that sent it (None where no broker vouches);
        ``unconfirmed_from`` the oldest earlier decision not confirmed yet (None: none)."""
        return cls(
            sender=sender,
            unconfirmed_from=unconfirmed_from,
            seq=seq,
            at=at,
            message_id=message_id,
            input=body,
            applied=step.applied,
            ops=step.ops,
            ignored=step.ignored,
            failed=step.failed,
            notes=step.notes or None,
            commands=[CommandRecord(worker_id=c.worker_id, body=c.body) for c in step.commands],
        )


class FailedRecord(_Record):
    kind: Literal["failed"] = "failed"
    message_id: str
    input: Body | None
    error: str


class OwnerRecord(_Record):
    """A searcher took the log over: ``epoch`` grows by one at every takeover."""

    kind: Literal["owner"] = "owner"
    epoch: int = Field(ge=1)
    owner: str


class SnapshotRecord(_Record):
    kind: Literal["snapshot"] = "snapshot"
    state: dict[str, Any]


Record = Annotated[
    CreatedRecord | InputRecord | FailedRecord | SnapshotRecord | OwnerRecord,
    Discriminator("kind"),
]

record_adapter: TypeAdapter[Record] = TypeAdapter(Record)
