"""Gang scheduling: one trial on several workers at once (docs/distributed.md).

A trial whose slots no single live worker can take is placed by the searcher on several
workers (or on one whose slots its work bucket is too large for), all or none:

1. ``gang_planned``, the searcher's own input (logged like ``worker_lost``): which workers
   run which part, with how many slots. The trial's queued attempt is replaced by a new
   one, and each chosen worker gets ``reserve_slots`` on its control queue.
2. A worker holds its slots for the part as they come free (it takes no other work on
   them) and answers ``slots_reserved`` once it holds them all; the chief's part (part 0)
   picks the ports where the trial's ranks meet.
3. Once every part holds its slots, each worker gets the trial's ``run_trial`` on its
   control queue, with :class:`GangPlacement`: its part, every part's address and slots,
   and the chief's ports. Its ranks meet with the attempt's start token as their token.

``kill_trial`` for an attempt that a worker holds slots for, and has not started,
releases them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rung.broker.limits import MAX_SLOTS_PER_TRIAL
from rung.broker.schemas.base import Message

__all__ = [
    "ADDRESS_PATTERN",
    "GangPart",
    "GangPlacement",
    "GangPlanned",
    "ReserveSlots",
    "SlotsReserved",
]

# A worker's address as other machines dial it: an IPv4 or IPv6 address or a host name.
ADDRESS_PATTERN = r"^[A-Za-z0-9._:%-]{1,253}$"


class GangPart(Message):
    """One worker's part of a trial: ``slots`` of its slots, its address."""

    worker_id: str = Field(min_length=1)
    slots: int = Field(ge=1, le=MAX_SLOTS_PER_TRIAL)
    address: str = Field(pattern=ADDRESS_PATTERN)


class GangPlanned(Message):
    """The searcher's placement of a trial's queued ``attempt`` on several workers (the
    chief's part first). Never sent by a worker."""

    type: Literal["gang_planned"] = "gang_planned"
    experiment_id: str
    trial_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    parts: list[GangPart] = Field(min_length=1, max_length=MAX_SLOTS_PER_TRIAL)

    @model_validator(mode="after")
    def _distinct_workers(self) -> GangPlanned:
        workers = [part.worker_id for part in self.parts]
        if len(set(workers)) != len(workers):
            raise ValueError(
                f"a gang's parts must be on distinct workers, got {workers}; one worker "
                "runs at most one part of a trial"
            )
        return self


class ReserveSlots(Message):
    """Hold ``slots`` slots for part ``part`` of the attempt, as they come free."""

    type: Literal["reserve_slots"] = "reserve_slots"
    experiment_id: str
    trial_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    part: int = Field(ge=0, lt=MAX_SLOTS_PER_TRIAL)
    slots: int = Field(ge=1, le=MAX_SLOTS_PER_TRIAL)


class SlotsReserved(Message):
    """A worker holds the slots of its part; the chief's part (0) gives the ports its
    ranks listen on (``pub_port``: the collectives; ``master_port``: torch's)."""

    type: Literal["slots_reserved"] = "slots_reserved"
    experiment_id: str
    trial_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    worker_id: str
    part: int = Field(ge=0, lt=MAX_SLOTS_PER_TRIAL)
    pub_port: int | None = Field(default=None, ge=1, le=65535)
    master_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _chief_gives_ports(self) -> SlotsReserved:
        if self.part == 0 and (self.pub_port is None or self.master_port is None):
            raise ValueError(
                "slots_reserved of part 0 (the chief's) must give pub_port and master_port"
            )
        return self


class GangPlacement(Message):
    """A ``run_trial``'s place in its gang: part ``rank`` of ``addrs`` (each part's
    address, the chief's first), each with ``slot_counts`` slots, and the chief's ports."""

    rank: int = Field(ge=0, lt=MAX_SLOTS_PER_TRIAL)
    addrs: list[Annotated[str, Field(pattern=ADDRESS_PATTERN)]] = Field(
        min_length=1, max_length=MAX_SLOTS_PER_TRIAL
    )
    slot_counts: list[Annotated[int, Field(ge=1, le=MAX_SLOTS_PER_TRIAL)]] = Field(
        min_length=1, max_length=MAX_SLOTS_PER_TRIAL
    )
    pub_port: int = Field(ge=1, le=65535)
    master_port: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _consistent(self) -> GangPlacement:
        if len(self.addrs) != len(self.slot_counts) or self.rank >= len(self.addrs):
            raise ValueError(
                f"a gang placement needs one address and one slot count per part and a rank "
                f"among them, got {len(self.addrs)} addresses, {len(self.slot_counts)} "
                f"counts and rank {self.rank}"
            )
        return self
