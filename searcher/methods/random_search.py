"""``single`` and ``random``: independent trials, each trained to ``max_length`` once.

Concurrency stays at the cap until ``max_trials`` trials were created. For ``random``, a
trial that exits with INVALID_HP is refunded, so it does not count against the budget;
``single`` never replaces its trial (Determined once looped forever there, PR #3246).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from searcher.config import RandomSearcher, SingleSearcher
from searcher.events import ExitedReason
from searcher.methods.base import SearchContext, SearchMethod, budget_progress
from searcher.ops import Close, Operation, ValidateAfter

__all__ = ["RandomSearch", "RandomState"]


class RandomState(BaseModel):
    created: int = 0
    refunded: int = 0


class RandomSearch(SearchMethod[RandomState]):
    name: ClassVar[str] = "random"
    State = RandomState

    def __init__(self, config: RandomSearcher | SingleSearcher) -> None:
        self.single = isinstance(config, SingleSearcher)
        self.max_length = config.max_length.units
        self.checkpoint = config.source_checkpoint_uuid
        if isinstance(config, SingleSearcher):
            self.max_trials, self.max_concurrent = 1, 1
        else:
            self.max_trials, self.max_concurrent = config.max_trials, config.max_concurrent_trials
        self.state = RandomState()

    def _budget_left(self) -> int:
        return self.max_trials - (self.state.created - self.state.refunded)

    def _new_trial(self, ctx: SearchContext) -> list[Operation]:
        create = ctx.create(checkpoint=self.checkpoint)
        self.state.created += 1
        rid = create.request_id
        return [
            create,
            ValidateAfter(request_id=rid, length=self.max_length),
            Close(request_id=rid),
        ]

    def _backfill(self, ctx: SearchContext) -> list[Operation]:
        return self._new_trial(ctx) if self._budget_left() > 0 else []

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        count = self.max_trials
        if self.max_concurrent > 0:
            count = min(count, self.max_concurrent)
        ops: list[Operation] = []
        for _ in range(count):
            ops += self._new_trial(ctx)
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        return []

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        return self._backfill(ctx)

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        if reason is ExitedReason.INVALID_HP and not self.single:
            self.state.refunded += 1
        return self._backfill(ctx)

    def progress(self, ctx: SearchContext) -> float:
        return budget_progress(ctx, self.max_length, self.max_trials)


class SingleSearch(RandomSearch):
    name: ClassVar[str] = "single"
