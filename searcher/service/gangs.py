"""Gang placement: which workers run a trial that no single live worker can take.

A queued trial of ``n`` slots waits in its work bucket (``broker.topology.work_bucket``)
for a worker at least that large. When no live worker is (the largest has fewer slots
than the bucket), the planner places the trial on several workers and applies the plan
to the trial's experiment as an input, ``gang_planned``, logged like any other: the run's
state stays a fold over its log, and replay needs neither heartbeats nor a clock (see
:mod:`rung.searcher.trials.gang` for what the input does).

The policy, and why it cannot deadlock or starve:

* **Equal parts, fewest workers** (as Determined places multi-machine trials): parts of
  ``k`` slots on ``n / k`` workers, ``k`` the largest worker size that divides ``n`` with
  enough workers of at least ``k`` slots; among those, the workers with the most free
  slots first, then by id. Only workers that give an address (``--address``, or found
  from the route to the broker) take parts, and a gang never mixes workers that gave a
  loopback address (on the broker's machine) with workers on other machines, whose
  ranks could not reach them.
* **One gang reserves at a time, in the order the trials were queued**, across every
  experiment this searcher serves: no two half-held reservations can wait on each other.
  A trial whose gang cannot be placed at all (too few workers) does not hold the others
  up; it is placed, in its turn, once workers join.
* **Reserved slots are never given to other work**, and every other slot keeps taking
  small trials: the gang waits at most until the trials running on its workers end or
  pause (the next rung's decision of each), never for ever.
* **A trial placed again waits a little first**: 1 s after its first gang ended before it
  ran, then 2, 4, ... up to 60 s, so that a worker that keeps refusing its part (or a
  part that cannot start) costs a few records a minute, not two a second. A gang that
  ran resets it.
* Experiments older than start tokens are not placed: their parts would have no shared
  token to meet with.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rung.broker.schemas import GangPart, GangPlanned, WorkerHeartbeat
from rung.broker.topology import work_bucket
from rung.searcher.trials import ExperimentRun

__all__ = ["GangPlanner", "PlannedGang", "place"]


@dataclass(frozen=True)
class PlannedGang:
    """A ``gang_planned`` input to apply to one experiment, with its message id."""

    experiment_id: str
    body: GangPlanned
    message_id: str


# The longest a trial whose gang ended before it ran waits before it is placed again.
BACKOFF_MAX_S = 60.0


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def place(need: int, live: Sequence[WorkerHeartbeat]) -> list[GangPart] | None:
    """Equal parts of ``need`` slots on the fewest of ``live`` workers, or None: among the
    workers on other machines than the broker's, else among those on its machine."""
    able = [beat for beat in live if beat.address is not None and beat.slots > 0]
    remote = [beat for beat in able if not _loopback(beat.address or "")]
    local = [beat for beat in able if _loopback(beat.address or "")]
    return _place(need, remote) or _place(need, local)


def _place(need: int, able: Sequence[WorkerHeartbeat]) -> list[GangPart] | None:
    for size in sorted({min(beat.slots, need) for beat in able}, reverse=True):
        if need % size:
            continue
        fits = sorted(
            (beat for beat in able if beat.slots >= size),
            key=lambda beat: (-beat.free_slots, beat.worker_id),
        )
        count = need // size
        if len(fits) >= count:
            return [
                GangPart(worker_id=beat.worker_id, slots=size, address=beat.address or "")
                for beat in fits[:count]
            ]
    return None


def needs_gang(need: int, live: Sequence[WorkerHeartbeat]) -> bool:
    """True when no live worker can take a trial of ``need`` slots from its bucket."""
    largest = max((beat.slots for beat in live), default=0)
    return need > 1 and work_bucket(need) > largest


Key = tuple[str, int]  # (experiment id, trial id)


class GangPlanner:
    def __init__(self) -> None:
        # The order in which queued trials were first seen waiting for a gang: FIFO.
        self._order: dict[Key, int] = {}
        self._counter = itertools.count()
        # Gangs placed for a trial since one last ran, and when it may be placed again.
        self._tries: dict[Key, int] = {}
        self._not_before: dict[Key, float] = {}

    def plan(
        self, runs: Iterable[ExperimentRun], live: Sequence[WorkerHeartbeat], now: float
    ) -> PlannedGang | None:
        """The next gang to place, or None: none waits, one is reserving already, or
        the live workers cannot hold any that waits (``now``: a monotonic clock)."""
        waiting = self._waiting(runs, now)
        if waiting is None:
            return None  # one gang reserves at a time
        for _, run, trial_id, attempt in sorted(waiting, key=lambda item: item[0]):
            need = max(run.experiment.config.resources.slots_per_trial, 1)
            if not needs_gang(need, live):
                continue  # a live worker can take it from its work bucket
            parts = place(need, live)
            if parts is None:
                continue  # too few workers for it now; it keeps its turn
            eid = run.experiment_id
            body = GangPlanned(experiment_id=eid, trial_id=trial_id, attempt=attempt, parts=parts)
            self._tries[(eid, trial_id)] = self._tries.get((eid, trial_id), 0) + 1
            self._not_before.pop((eid, trial_id), None)
            return PlannedGang(eid, body, f"{eid}/timer/gang/{trial_id}/{attempt}")
        return None

    def _waiting(
        self, runs: Iterable[ExperimentRun], now: float
    ) -> list[tuple[int, ExperimentRun, int, int]] | None:
        """The queued trials that may be placed now, with their turn; None while a gang
        reserves. Forgets the trials no longer queued."""
        waiting: list[tuple[int, ExperimentRun, int, int]] = []
        seen: set[Key] = set()
        reserving = False
        for run in runs:
            need = max(run.experiment.config.resources.slots_per_trial, 1)
            if need == 1 or run.start_secret is None:
                continue
            for trial in run.trials.values():
                if trial.state != "QUEUED":
                    continue  # (forgotten below: a gang that ran starts afresh)
                key = (run.experiment_id, trial.trial_id)
                seen.add(key)
                if trial.gang is not None:
                    reserving = True
                    continue
                if key not in self._order:
                    self._order[key] = next(self._counter)
                if run.state == "ACTIVE" and self._due(key, now):
                    waiting.append((self._order[key], run, trial.trial_id, trial.attempt))
        for table in (self._order, self._tries, self._not_before):
            for key in [k for k in table if k not in seen]:
                del table[key]
        return None if reserving else waiting

    def _due(self, key: Key, now: float) -> bool:
        """Whether a queued trial may be placed now: at once the first time, and after a
        growing wait once a gang of it ended before it ran."""
        tries = self._tries.get(key, 0)
        if tries == 0:
            return True
        if key not in self._not_before:  # first seen waiting again: the wait starts
            self._not_before[key] = now + min(2.0 ** (tries - 1), BACKOFF_MAX_S)
        return now >= self._not_before[key]
