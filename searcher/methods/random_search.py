"""``single`` and ``random``: independent trials with sampled hyperparameters.

Concurrency stays at the cap until ``max_trials`` trials were created. For ``random``, a
trial that exits with INVALID_HP is refunded, so it does not count against the budget;
``single`` never replaces its trial (Determined once looped forever there, PR #3246).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from rung.searcher.config import RandomSearcher, SingleSearcher
from rung.searcher.events import ExitedReason
from rung.searcher.methods.base import SearchContext
from rung.searcher.methods.one_shot import OneShotSearch
from rung.searcher.ops import Create, Operation

__all__ = ["RandomSearch", "RandomState", "SingleSearch"]


class RandomState(BaseModel):
    created: int = 0
    refunded: int = 0


class RandomSearch(OneShotSearch[RandomState]):
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

    def total_trials(self) -> int:
        return self.max_trials

    def next_trial(self, ctx: SearchContext) -> Create | None:
        if self.state.created - self.state.refunded >= self.max_trials:
            return None
        self.state.created += 1
        return ctx.create(checkpoint=self.checkpoint)

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        if reason is ExitedReason.INVALID_HP and not self.single:
            self.state.refunded += 1
            if self.replaced(ctx, request_id):  # its successor started: the refund's
                return self._start_next(ctx)  # trial starts now, as under rules 1
        return super().trial_exited_early(ctx, request_id, reason)


class SingleSearch(RandomSearch):
    name: ClassVar[str] = "single"
