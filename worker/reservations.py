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

__all__ = ["Reservation", "Reservations", "bound_ports"]

Key = tuple[str, int, int]


def bound_ports(count: int) -> list[socket.socket]:
    """``count`` TCP sockets bound to free ports on every address (the chief's ranks
    listen on all of them), held until the part starts so that nothing else takes them;
    all or none."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("", 0))
    except OSError:
        for sock in held:
            sock.close()
        raise
    return held


@dataclass
class Reservation:
    cmd: ReserveSlots
    held: list[int] = field(default_factory=list)
    # The ports the chief's part listens on (part 0 only), picked once it holds its
    # slots, and held (bound) until the part starts or the reservation ends.
    ports: tuple[int, int] | None = None
    sockets: list[socket.socket] = field(default_factory=list)
    # Why the chief's ports could not be picked (none free): the part cannot run here.
    failed: str | None = None

    def release_ports(self) -> None:
        """Let the held ports go: the part's ranks bind them next."""
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()

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

    def pop(self, key: Key, *, keep_ports: bool = False) -> Reservation | None:
        """End a reservation: given back (its ports go), or its part starts
        (``keep_ports``: the caller hands them to the part, which lets them go as its
        process is spawned)."""
        reservation = self.by_key.pop(key, None)
        if reservation is not None and not keep_ports:
            reservation.release_ports()
        return reservation

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
                    try:
                        reservation.sockets = bound_ports(2)  # (held together: distinct)
                    except OSError as exc:
                        reservation.failed = f"no free port for the chief's ranks: {exc}"
                    else:
                        pub, master = (sock.getsockname()[1] for sock in reservation.sockets)
                        reservation.ports = (pub, master)
                completed.append(reservation)
        return left, completed

    def held(self) -> int:
        """How many slots the reservations hold."""
        return sum(len(r.held) for r in self.by_key.values())
