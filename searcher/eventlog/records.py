"""The records of an experiment's event log: versioned, numbered, typed.

* ``created``: the config (with its seed), the context's hash and the checkpoint root;
* ``input``: one message the searcher handled, in the order it handled them (``input``
  is None for the experiment's start), the search events it caused (``applied``), the
  operations decided (``ops``) and the commands sent (``commands``), or why it was
  ignored;
* ``failed``: an input the search method could not handle; the experiment failed;
* ``snapshot``: the whole state after record ``seq - 1``, so a restart reads only the tail;
* ``owner``: a searcher took the log over, with a new ``epoch``; a searcher that finds a
  record it did not write stops acting on the experiment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, TypeAdapter

from rung.broker.schemas.commands import WorkerCommand
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


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = LOG_VERSION
    seq: int = Field(ge=1)
    # Wall-clock time of the write, for people; no decision ever reads it.
    at: float = 0.0


class CommandRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_id: str | None
    body: WorkerCommand


class CreatedRecord(_Record):
    kind: Literal["created"] = "created"
    experiment_id: str
    config: dict[str, Any]
    context_hash: str
    checkpoint_root: str


class InputRecord(_Record):
    kind: Literal["input"] = "input"
    message_id: str
    input: Body | None
    applied: list[SearchEvent] = Field(default_factory=list)
    ops: list[Operation] = Field(default_factory=list)
    commands: list[CommandRecord] = Field(default_factory=list)
    ignored: str | None = None

    @classmethod
    def of(
        cls, seq: int, message_id: str, body: Body | None, step: Step, at: float = 0.0
    ) -> InputRecord:
        """The record of one handled input and everything it caused."""
        return cls(
            seq=seq,
            at=at,
            message_id=message_id,
            input=body,
            applied=step.applied,
            ops=step.ops,
            ignored=step.ignored,
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
