"""Round timers: a search's round that stays open too long becomes an input.

A search method with rounds (population-based training's synchronous mode) says which
round is open and its limit (``SearchMethod.round_limit``). The service's clock, never
the pure core's, times it: once a round of an active experiment has been open that long
in this searcher, its experiment gets a ``round_timeout`` input, logged like any other,
at every tick until the round has ended, each firing numbered
(``<experiment id>/timer/round/<round>/<n>``, ``n`` counted by this searcher while the
round stays open and active): a number used before (refused while the experiment was
paused between the check and the input, or by a searcher before a restart) is taken as
a duplicate, and the next tick's number applies. A timeout that applies ends its round, so the round
times out once. A round is timed from when this searcher first saw it open: after a
restart, or while the experiment is paused, the clock starts again, so a round is never
cut short, only possibly given longer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rung.broker.schemas import RoundTimeout
from rung.searcher.trials import ExperimentRun

__all__ = ["DueRound", "RoundTimer"]


@dataclass(frozen=True, slots=True)
class DueRound:
    """A ``round_timeout`` input to apply to one experiment, with its message id."""

    experiment_id: str
    body: RoundTimeout
    message_id: str


class RoundTimer:
    """When each open round was first seen, by experiment (a monotonic clock)."""

    def __init__(self) -> None:
        self._opened: dict[tuple[str, int], float] = {}
        self._fired: dict[tuple[str, int], int] = {}

    def due(self, runs: Iterable[ExperimentRun], now: float) -> list[DueRound]:
        """The rounds whose time is up; forgets the rounds that closed."""
        due: list[DueRound] = []
        open_now: set[tuple[str, int]] = set()
        for run in runs:
            limit = run.experiment.method.round_limit()
            if limit is None or run.state != "ACTIVE":
                continue
            round_index, timeout_s = limit
            key = (run.experiment_id, round_index)
            open_now.add(key)
            opened = self._opened.setdefault(key, now)
            if now - opened >= timeout_s:
                body = RoundTimeout(
                    experiment_id=run.experiment_id,
                    round=round_index,
                    after_s=round(now - opened, 1),
                )
                fired = self._fired[key] = self._fired.get(key, 0) + 1
                message_id = f"{run.experiment_id}/timer/round/{round_index}/{fired}"
                due.append(DueRound(run.experiment_id, body, message_id))
        self._opened = {k: v for k, v in self._opened.items() if k in open_now}
        self._fired = {k: v for k, v in self._fired.items() if k in open_now}
        return due
