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
  from the route to the broker) take parts.
* **One gang reserves at a time, in the order the trials were queued**, across every
  experiment this searcher serves: no two half-held reservations can wait on each other.
  A trial whose gang cannot be placed at all (too few workers) does not hold the others
  up; it is placed, in its turn, once workers join.
* **Reserved slots are never given to other work**, and every other slot keeps taking
  small trials: the gang waits at most until the trials running on its workers end or
  pause (the next rung's decision of each), never for ever.
"""

from __future__ import annotations

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


def place(need: int, live: Sequence[WorkerHeartbeat]) -> list[GangPart] | None:
    """Equal parts of ``need`` slots on the fewest of ``live`` workers, or None."""
    able = [beat for beat in live if beat.address is not None and beat.slots > 0]
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


class GangPlanner:
    def __init__(self) -> None:
        # The order in which queued trials were first seen waiting for a gang: FIFO.
        self._order: dict[tuple[str, int, int], int] = {}
        self._counter = itertools.count()

    def plan(
        self, runs: Iterable[ExperimentRun], live: Sequence[WorkerHeartbeat]
    ) -> PlannedGang | None:
        """The next gang to place, or None: none waits, one is reserving already, or
        the live workers cannot hold any that waits."""
        waiting: list[tuple[int, ExperimentRun, int, int]] = []
        seen: set[tuple[str, int, int]] = set()
        for run in runs:
            need = max(run.experiment.config.resources.slots_per_trial, 1)
            if need == 1:
                continue
            for trial in run.trials.values():
                if trial.state != "QUEUED":
                    continue
                if trial.gang is not None:
                    return None  # one gang reserves at a time
                if run.state != "ACTIVE":
                    continue
                key = (run.experiment_id, trial.trial_id, trial.attempt)
                seen.add(key)
                if key not in self._order:
                    self._order[key] = next(self._counter)
                waiting.append((self._order[key], run, trial.trial_id, trial.attempt))
        for key in [k for k in self._order if k not in seen]:
            del self._order[key]
        for _, run, trial_id, attempt in sorted(waiting, key=lambda item: item[0]):
            need = max(run.experiment.config.resources.slots_per_trial, 1)
            if not needs_gang(need, live):
                continue  # a live worker can take it from its work bucket
            parts = place(need, live)
            if parts is None:
                continue  # too few workers for it now; it keeps its turn
            eid = run.experiment_id
            body = GangPlanned(experiment_id=eid, trial_id=trial_id, attempt=attempt, parts=parts)
            return PlannedGang(eid, body, f"{eid}/timer/gang/{trial_id}/{attempt}")
        return None
