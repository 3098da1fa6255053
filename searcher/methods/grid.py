"""``grid``: one trial per point of the Cartesian product, each trained to ``max_length``.

Points are visited in order, at most ``max_concurrent_trials`` at a time. A point whose
trial fails or has invalid hyperparameters is not tried again: it is a point of the grid.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from searcher.config import GridSearcher, Hyperparameters
from searcher.events import ExitedReason
from searcher.methods.base import SearchContext, SearchMethod, budget_progress
from searcher.ops import Close, Operation, ValidateAfter
from searcher.space import grid_points

__all__ = ["GridSearch", "GridState"]


class GridState(BaseModel):
    next_point: int = 0


class GridSearch(SearchMethod[GridState]):
    name: ClassVar[str] = "grid"
    State = GridState

    def __init__(self, config: GridSearcher, hyperparameters: Hyperparameters) -> None:
        self.points = grid_points(hyperparameters)
        self.max_length = config.max_length.units
        self.max_concurrent = config.max_concurrent_trials
        self.checkpoint = config.source_checkpoint_uuid
        self.state = GridState()

    def _next(self, ctx: SearchContext) -> list[Operation]:
        if self.state.next_point >= len(self.points):
            return []
        create = ctx.create(self.points[self.state.next_point], checkpoint=self.checkpoint)
        self.state.next_point += 1
        rid = create.request_id
        return [
            create,
            ValidateAfter(request_id=rid, length=self.max_length),
            Close(request_id=rid),
        ]

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        count = len(self.points)
        if self.max_concurrent > 0:
            count = min(count, self.max_concurrent)
        ops: list[Operation] = []
        for _ in range(count):
            ops += self._next(ctx)
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        return []

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        return self._next(ctx)

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        return self._next(ctx)

    def progress(self, ctx: SearchContext) -> float:
        return budget_progress(ctx, self.max_length, len(self.points))
