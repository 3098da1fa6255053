"""Slots a worker holds for its parts of trials that run on several workers.

A ``reserve_slots`` asks a worker to hold some of its slots for one part of a trial's
attempt (gang scheduling, docs/distributed.md). The worker takes its free slots for it
at once, and gives it each slot that comes free after, before any other work: reserved
slots are never counted free, so its work buckets take only what is left. Once a
reservation holds all its slots the worker says so (``slots_reserved``); the chief's part
(part 0) picks the ports its trial's ranks meet on. The reservation ends when the part
starts (``run_trial`` with the attempt's placement) or is given back (``kill_trial``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from rung.broker.schemas import ReserveSlots

__all__ = ["Reservation", "Reservations", "free_port"]

Key = tuple[str, int, int]


def free_port() -> int:
    """A TCP port free on every address now (the chief's ranks listen on all of them)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Reservation:
    cmd: ReserveSlots
    held: list[int] = field(default_factory=list)
    # The ports the chief's part listens on (part 0 only), picked once it holds its slots.
    ports: tuple[int, int] | None = None

    @property
    def key(self) -> Key:
        return self.cmd.experiment_id, self.cmd.trial_id, self.cmd.attempt

    @property
    def complete(self) -> bool:
        return len(self.held) >= self.cmd.slots


class Reservations:
    def __init__(self) -> None:
        # In the order they were asked for: the first takes slots first.
        self.by_key: dict[Key, Reservation] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    def __len__(self) -> int:
        return len(self.by_key)

    def add(self, cmd: ReserveSlots) -> Reservation:
        reservation = Reservation(cmd)
        self.by_key[reservation.key] = reservation
        return reservation

    def pop(self, key: Key) -> Reservation | None:
        return self.by_key.pop(key, None)

    def give(self, free: list[int]) -> tuple[list[int], list[Reservation]]:
        """Hand ``free`` slots to the reservations that still need some, in order; the
        slots left over, and the reservations that became complete."""
        left = sorted(free)
        completed: list[Reservation] = []
        for reservation in self.by_key.values():
            take = reservation.cmd.slots - len(reservation.held)
            if take <= 0 or not left:
                continue
            reservation.held += left[:take]
            left = left[take:]
            if len(reservation.held) == reservation.cmd.slots:
                if reservation.cmd.part == 0:
                    pub = free_port()
                    master = free_port()
                    while master == pub:
                        master = free_port()
                    reservation.ports = (pub, master)
                completed.append(reservation)
        return left, completed

    def held(self) -> int:
        """How many slots the reservations hold."""
        return sum(len(r.held) for r in self.by_key.values())
