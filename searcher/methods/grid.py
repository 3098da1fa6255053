"""``grid``: one trial per point of the Cartesian product, each trained to ``max_length``.

Points are visited in order, at most ``max_concurrent_trials`` at a time. A point whose
trial fails or has invalid hyperparameters is not tried again: it is a point of the grid.

The grid is never built: point ``i`` is computed when trial ``i`` starts, and the state
is the index of the next point, whatever the size of the grid.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from rung.searcher.config import GridSearcher, Hyperparameters
from rung.searcher.methods.base import SearchContext
from rung.searcher.methods.one_shot import OneShotSearch
from rung.searcher.ops import Create
from rung.searcher.space import Grid

__all__ = ["GridSearch", "GridState"]


class GridState(BaseModel):
    next_point: int = 0


class GridSearch(OneShotSearch[GridState]):
    name: ClassVar[str] = "grid"
    State = GridState

    def __init__(self, config: GridSearcher, hyperparameters: Hyperparameters) -> None:
        self.grid = Grid(hyperparameters)
        self.max_length = config.max_length.units
        self.max_concurrent = config.max_concurrent_trials
        self.checkpoint = config.source_checkpoint_uuid
        self.state = GridState()

    def total_trials(self) -> int:
        return self.grid.size

    def next_trial(self, ctx: SearchContext) -> Create | None:
        if self.state.next_point >= self.grid.size:
            return None
        point = self.grid.point(self.state.next_point)
        self.state.next_point += 1
        return ctx.create(point, checkpoint=self.checkpoint)
