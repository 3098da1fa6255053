"""The shape ``single``, ``random`` and ``grid`` share: every trial trains once, fully.

Each trial gets ``Create``, ``ValidateAfter(max_length)`` and ``Close`` at once, as in
Determined 0.37. The search starts as many trials as the cap allows and starts the next
one whenever a trial's training is done, until :meth:`OneShotSearch.next_trial` has no
more: under rules 2 (:data:`~rung.searcher.methods.base.RULES`) when its last validation
is reported, so that the next trial waits on the queue while the trial's process exits
and takes its slot the moment it frees (issue 18); under rules 1 (Determined's, and logs
written before) when the trial has ended, its process exited. Either way one trial
starts for each that ends, within the budget: a trial that ended after its last
validation had its successor started already.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TypeVar

from pydantic import BaseModel

from rung.searcher.events import ExitedReason
from rung.searcher.methods.base import RULES, SearchContext, SearchMethod, budget_progress
from rung.searcher.ops import Close, Create, Operation, ValidateAfter

__all__ = ["OneShotSearch"]

S = TypeVar("S", bound=BaseModel)


class OneShotSearch(SearchMethod[S]):
    max_length: int
    max_concurrent: int
    # The rules it decides by (RULES); build_method sets the experiment's.
    rules: int = RULES

    @abstractmethod
    def next_trial(self, ctx: SearchContext) -> Create | None:
        """The next trial to start, or None when the search has started them all."""

    @abstractmethod
    def total_trials(self) -> int:
        """How many trials the search trains in all (for progress)."""

    def _start_next(self, ctx: SearchContext) -> list[Operation]:
        create = self.next_trial(ctx)
        if create is None:
            return []
        rid = create.request_id
        return [
            create,
            ValidateAfter(request_id=rid, length=self.max_length),
            Close(request_id=rid),
        ]

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        count = self.total_trials()
        if self.max_concurrent > 0:
            count = min(count, self.max_concurrent)
        ops: list[Operation] = []
        for _ in range(count):
            ops += self._start_next(ctx)
        return ops

    def replaced(self, ctx: SearchContext, request_id: str) -> bool:
        """Whether the trial's successor has started already: under rules 2, once the
        trial reported its last validation (a subclass that decides more there calls
        this class's ``validation_completed`` too)."""
        return self.rules >= 2 and ctx.trials[request_id].trained >= self.max_length

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        if self.rules >= 2 and length >= self.max_length:
            return self._start_next(ctx)
        return []

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        return [] if self.replaced(ctx, request_id) else self._start_next(ctx)

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        return [] if self.replaced(ctx, request_id) else self._start_next(ctx)

    def progress(self, ctx: SearchContext) -> float:
        return budget_progress(ctx, self.max_length, self.total_trials())
