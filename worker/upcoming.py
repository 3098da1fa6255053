"""The next trial, taken while a slot frees (issue 18).

When the searcher tells one of a worker's trials to stop (``pause_trial``, ``close_trial``,
``kill_trial``), its slots come free once its process has been reaped: tens of
milliseconds for a script that leaves ``operations()`` and ends, seconds for one that
saves a checkpoint or tears down a GPU context first. Meanwhile the worker consumes the
work queues that those slots would fit, at a lower consumer priority than a worker with
slots free now (RabbitMQ's ``x-priority``), so that a free slot anywhere takes a command
first. It takes one such command at most, unacknowledged (a worker that dies leaves it
to the broker, which gives it to another), copies the trial's context into its run
directory meanwhile, and starts it as soon as the slots are free. Slots that have not
freed within ``HOLD_S`` send the command back to the queue, and count as freeing no more.
The fork itself waits for the slots: a GPU is never shared, and a slot's trial never
overlaps the next. While a command is held, the free slots it counts on are spoken for:
no smaller command takes them.

A command given back counts as a delivery toward the work queue's delivery limit
(``BROKER_DELIVERY_LIMIT``, 20 on RabbitMQ 3.x), and the broker hands a command given
back to the next consumer first. So a command delivered ``SLOW_AFTER`` times already is
held ``SLOW_HOLD_S`` instead of ``HOLD_S``: it waits for these slots rather than going
round the workers whose trials are leaving, a delivery each time.

This module keeps the bookkeeping (which trials are leaving, the one command held); the
worker (:mod:`.agent`) does the broker's and the processes' part.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rung.broker.port import Delivery
from rung.broker.schemas import RunTrial

__all__ = ["HOLD_S", "SLOW_AFTER", "SLOW_HOLD_S", "Held", "Upcoming", "deliveries", "hold_s"]

# How long a command taken ahead waits for the slots of the trials told to stop: past
# it, the command goes back to the queue, for a worker with a slot free.
HOLD_S = 2.0
# A command delivered this many times already (the broker's ``x-delivery-count``) is held
# SLOW_HOLD_S: a give-back a minute at most per worker keeps it far below the limit of 20.
SLOW_AFTER = 5
SLOW_HOLD_S = 60.0

Key = tuple[str, int, int]


def deliveries(delivery: Delivery) -> int:
    """How many times the broker delivered the message before (``x-delivery-count``)."""
    count = delivery.headers.get("x-delivery-count", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def hold_s(delivery: Delivery) -> float:
    """How long a command taken ahead waits for its slots before it goes back."""
    return HOLD_S if deliveries(delivery) < SLOW_AFTER else SLOW_HOLD_S


@dataclass
class Held:
    """A ``run_trial`` taken ahead of its slots (not acknowledged yet)."""

    delivery: Delivery
    body: RunTrial
    # Its context copied into its run directory meanwhile (the path), then started there.
    prepared: asyncio.Task[Path] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def key(self) -> Key:
        return self.body.experiment_id, self.body.trial_id, self.body.attempt

    @property
    def need(self) -> int:
        return max(self.body.slots, 1)

    async def run_dir(self) -> Path | None:
        """Where its context was copied, once the copy (in a thread, which a cancellation
        would not stop) has ended; None if it failed or was never made (its start copies
        it again, and reports a failure as any start does)."""
        if self.prepared is None:
            return None
        await asyncio.wait([self.prepared])
        if self.prepared.cancelled() or self.prepared.exception() is not None:
            return None  # (the start copies it again, and says why if it fails)
        return self.prepared.result()


class Upcoming:
    """The trials told to stop whose slots will free, and the one command held for them."""

    def __init__(self) -> None:
        # Slots of the trials told to stop, by attempt, until their processes are reaped.
        self.leaving: dict[Key, int] = {}
        self.held: Held | None = None
        # Attempts whose slots are free already: a stop that comes later frees nothing.
        self._gone: deque[Key] = deque(maxlen=1024)

    def stopping(self, key: Key, slots: int) -> None:
        """A trial was told to stop: its ``slots`` will free once its process ends."""
        if key not in self._gone:
            self.leaving[key] = slots

    def left(self, key: Key) -> None:
        """The trial's process was reaped: its slots are free."""
        self.leaving.pop(key, None)
        self._gone.append(key)

    def never_started(self, key: Key) -> None:
        """The trial's start failed: its slots are free (its command may come again)."""
        self.leaving.pop(key, None)

    def freeing(self) -> int:
        """Slots of the trials told to stop, not free yet."""
        return sum(self.leaving.values())

    def room(self) -> int:
        """Slots about to free that a command may be taken ahead for: none while one is
        held (one at most)."""
        return 0 if self.held is not None else self.freeing()

    def spoken_for(self) -> int:
        """Free slots the held command counts on (beyond those freeing): taken by nothing
        else."""
        return 0 if self.held is None else max(0, self.held.need - self.freeing())

    def hold(self, delivery: Delivery, body: RunTrial) -> Held:
        if self.held is not None:
            raise RuntimeError("a command is held already; one at most")
        self.held = Held(delivery, body)
        return self.held

    def take(self, free: int) -> Held | None:
        """The held command, taken out, if ``free`` slots fit it now."""
        held = self.held
        if held is None or held.need > free:
            return None
        self.held = None
        if held.timer is not None:
            held.timer.cancel()
        return held

    def drop(self, *, expired: bool = False) -> Held | None:
        """The held command, taken out (to give back), if any. ``expired``: the slots it
        waited for did not free in time, and no longer count as freeing (else the worker
        would take the same command again, and give it back again, every ``HOLD_S``)."""
        held, self.held = self.held, None
        if held is not None and held.timer is not None:
            held.timer.cancel()
        if expired:
            self.leaving.clear()
        return held
