"""``async_halving`` (ASHA), with Determined 0.37's two variants.

Both keep rungs at absolute lengths ``max(floor(max_length / divisor**(n-1-i)), 1)`` and
rank results where smaller is better (metrics are negated when bigger is better).

* :class:`PromotionASHA` (``stop_once: false``, the default). A trial that finishes a rung
  waits there, *paused*: it holds no operation, so its worker slot is free. Each time a
  rung gets a result, ``floor(results / divisor)`` of its best trials must have been
  promoted; the method promotes the newcomer if it ranks among them, or else the waiting
  trial that just became eligible. When nothing is promoted, a new trial starts while the
  budget lasts. Once the bottom rung has ``max_trials`` results, rungs with no trial still
  running close their unpromoted trials.
* :class:`StoppingASHA` (``stop_once: true``). A trial that finishes a rung continues at
  once if it ranks in the top ``max(floor(results / divisor), 1)`` of that rung, ties
  going to the newcomer; otherwise it is closed for good.

A trial that exits early (ERRORED, USER_CANCELED) ranks worst in its rung. A trial with
INVALID_HP has its results removed and is replaced by a new trial.

Fixes over Determined 0.37: a trial is never counted twice when it both exits early and
closes; an early exit of a paused or closed trial adds no second result; a trial with
invalid hyperparameters no longer blocks its rung from closing out.
"""

from __future__ import annotations

import bisect
from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import BaseModel, Field, PlainSerializer

from rung.searcher.config import AsyncHalvingSearcher
from rung.searcher.events import ExitedReason
from rung.searcher.methods.base import WORST, SearchContext, SearchMethod, rank_value
from rung.searcher.ops import Close, Operation, ValidateAfter
from rung.searcher.rungs import rung_lengths

__all__ = ["ASHAParams", "ASHAState", "PromotionASHA", "StoppingASHA", "build_asha"]


@dataclass(frozen=True, slots=True)
class ASHAParams:
    """One successive-halving bracket."""

    num_rungs: int
    max_trials: int
    max_concurrent: int
    divisor: float
    max_length: int
    smaller_is_better: bool = True
    checkpoint: str | None = None

    @classmethod
    def from_config(cls, config: AsyncHalvingSearcher) -> ASHAParams:
        return cls(
            num_rungs=config.num_rungs,
            max_trials=config.max_trials,
            max_concurrent=config.max_concurrent_trials,
            divisor=config.divisor,
            max_length=config.max_length.units,
            smaller_is_better=config.smaller_is_better,
            checkpoint=config.source_checkpoint_uuid,
        )

    def initial_concurrency(self) -> int:
        if self.max_concurrent > 0:
            return min(self.max_concurrent, self.max_trials)
        return max(min(int(self.divisor ** (self.num_rungs - 1)), self.max_trials), 1)


class RungEntry(BaseModel):
    request_id: str
    value: float
    promoted: bool = False


class Rung(BaseModel):
    length: int
    # Results, best first (smaller value is better).
    results: list[RungEntry] = Field(default_factory=list)
    # Trials training towards this rung right now.
    running: list[str] = Field(default_factory=list)


# A set of request ids, stored sorted so that snapshots are byte-stable.
IdSet = Annotated[set[str], PlainSerializer(sorted, return_type=list[str])]


class ASHAState(BaseModel):
    rungs: list[Rung]
    trial_rungs: dict[str, int] = Field(default_factory=dict)
    early_exits: IdSet = Field(default_factory=set)
    closed: IdSet = Field(default_factory=set)
    trials_completed: int = 0
    invalid_trials: int = 0
    # Rungs below this index are closed out for good (promotion-based only).
    closed_out: int = 0


def _value(entry: RungEntry) -> float:
    return entry.value


class _ASHA(SearchMethod[ASHAState]):
    name: ClassVar[str] = "async_halving"
    State = ASHAState

    def __init__(self, params: ASHAParams) -> None:
        self.params = params
        lengths = rung_lengths(params.num_rungs, params.divisor, params.max_length)
        self.state = ASHAState(rungs=[Rung(length=length) for length in lengths])

    # -- shared bookkeeping
    @property
    def top(self) -> int:
        return len(self.state.rungs) - 1

    def _budget_left(self) -> bool:
        return len(self.state.trial_rungs) - self.state.invalid_trials < self.params.max_trials

    def _train(self, request_id: str, rung_index: int) -> ValidateAfter:
        self.state.trial_rungs[request_id] = rung_index
        rung = self.state.rungs[rung_index]
        rung.running.append(request_id)
        return ValidateAfter(request_id=request_id, length=rung.length)

    def _new_trial(self, ctx: SearchContext) -> list[Operation]:
        create = ctx.create(checkpoint=self.params.checkpoint)
        return [create, self._train(create.request_id, 0)]

    def _leave_running(self, request_id: str) -> bool:
        """Take the trial off its rung's running list; False if it was not running."""
        rung = self.state.rungs[self.state.trial_rungs[request_id]]
        if request_id in rung.running:
            rung.running.remove(request_id)
            return True
        return False

    def _close(self, request_id: str) -> list[Operation]:
        self.state.closed.add(request_id)
        return [Close(request_id=request_id)]

    def _remove_results(self, request_id: str) -> None:
        for rung in self.state.rungs[: self.state.trial_rungs[request_id] + 1]:
            rung.results = [e for e in rung.results if e.request_id != request_id]

    # -- handlers
    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        ops: list[Operation] = []
        for _ in range(self.params.initial_concurrency()):
            ops += self._new_trial(ctx)
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        if request_id not in self.state.trial_rungs or not self._leave_running(request_id):
            return []
        value = rank_value(metric, self.params.smaller_is_better)
        return self._rung_completed(ctx, request_id, value)

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        self.state.trials_completed += 1
        return []

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        if request_id not in self.state.trial_rungs:
            return []
        was_running = self._leave_running(request_id)
        if reason is ExitedReason.INVALID_HP:
            self._remove_results(request_id)
            self.state.invalid_trials += 1
            # Its replacement reopens the bottom rung: close out from the bottom again.
            self.state.closed_out = 0
            self.state.closed.add(request_id)
            return self._new_trial(ctx) if self._budget_left() else []
        self.state.early_exits.add(request_id)
        self.state.trials_completed += 1
        already_ranked = request_id in self.state.closed or not was_running
        self.state.closed.add(request_id)
        if already_ranked:
            # Paused or closed: its result at its rung is in already; rank nothing twice.
            return []
        return self._rung_completed(ctx, request_id, WORST)

    def progress(self, ctx: SearchContext) -> float:
        bottom = len(self.state.rungs[0].results)
        estimate = bottom / (1.2 * self.params.max_trials)
        if bottom >= self.params.max_trials:
            done = self.state.trials_completed - self.state.invalid_trials
            estimate = max(estimate, done / self.params.max_trials)
        return min(estimate, 1.0)

    @abstractmethod
    def _rung_completed(self, ctx: SearchContext, request_id: str, value: float) -> list[Operation]:
        """Rank ``value`` in the trial's rung and decide what follows."""


class PromotionASHA(_ASHA):
    """Promotion-based ASHA: trials wait in their rung until promoted or closed."""

    def _promotion(self, rung: Rung, request_id: str, value: float) -> str | None:
        """Insert the result; return the trial to promote now, if any."""
        count = len(rung.results)
        old_quota = int(count / self.params.divisor)
        quota = int((count + 1) / self.params.divisor)
        index = bisect.bisect_right(rung.results, value, key=_value)
        promote_now = index < quota
        rung.results.insert(
            index, RungEntry(request_id=request_id, value=value, promoted=promote_now)
        )
        if promote_now:
            return request_id
        if quota != old_quota and not rung.results[old_quota].promoted:
            waiting = rung.results[old_quota]
            waiting.promoted = True
            return waiting.request_id
        return None

    def _rung_completed(self, ctx: SearchContext, request_id: str, value: float) -> list[Operation]:
        ops: list[Operation] = []
        trained = False
        rung_index = self.state.trial_rungs[request_id]
        if rung_index == self.top:
            if request_id not in self.state.early_exits:
                ops += self._close(request_id)
        else:
            promoted = self._promotion(self.state.rungs[rung_index], request_id, value)
            if promoted in self.state.early_exits:
                # Promote it as if it had run and returned the worst possible result.
                self.state.trial_rungs[promoted] = rung_index + 1
                return ops + self._rung_completed(ctx, promoted, WORST)
            if promoted is not None and promoted not in self.state.closed:
                ops.append(self._train(promoted, rung_index + 1))
                trained = True
        if not trained and self._budget_left():
            ops += self._new_trial(ctx)
        if len(self.state.rungs[0].results) >= self.params.max_trials:
            ops += self._close_out()
        return ops

    def _close_out(self) -> list[Operation]:
        """Close unpromoted trials in every rung below the first one still training.

        A rung closed out this way gets no more results (its lower rungs are done), so
        ``closed_out`` remembers it and later calls start above it.
        """
        ops: list[Operation] = []
        state = self.state
        while state.closed_out < len(state.rungs) and not state.rungs[state.closed_out].running:
            for entry in state.rungs[state.closed_out].results:
                rid = entry.request_id
                if not entry.promoted and rid not in state.closed and rid not in state.early_exits:
                    ops += self._close(rid)
            state.closed_out += 1
        return ops


class StoppingASHA(_ASHA):
    """Stopping-based ASHA: continue now or stop for good."""

    def _rung_completed(self, ctx: SearchContext, request_id: str, value: float) -> list[Operation]:
        rung_index = self.state.trial_rungs[request_id]
        rung = self.state.rungs[rung_index]
        index = bisect.bisect_left(rung.results, value, key=_value)
        rung.results.insert(index, RungEntry(request_id=request_id, value=value))
        ops: list[Operation] = []
        early = request_id in self.state.early_exits
        keep = max(int(len(rung.results) / self.params.divisor), 1)
        if not early and rung_index < self.top and index < keep:
            return [self._train(request_id, rung_index + 1)]
        if not early:
            ops += self._close(request_id)
        if self._budget_left():
            ops += self._new_trial(ctx)
        return ops


def build_asha(params: ASHAParams, *, stop_once: bool) -> _ASHA:
    return StoppingASHA(params) if stop_once else PromotionASHA(params)
