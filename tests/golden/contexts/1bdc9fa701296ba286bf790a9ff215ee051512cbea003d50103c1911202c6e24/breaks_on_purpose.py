"""The custom search method of the golden log ``failed.v1.jsonl``: it raises on purpose.

A one-shot search (each trial trains once to ``max_length``, two at a time, four in all)
whose ``validation_completed`` raises for a metric above ``options.raise_above``: the
searcher fails the experiment on that input. It uses only the public interface of
custom methods (``rung.searcher.methods.SearchMethod`` and ``rung.searcher.ops``).

This file is part of the golden log: its directory is named after the SHA-256 of its
bytes, the log's ``context_hash``. Never edit it; a test checks that it is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from rung.searcher.methods import SearchMethod
from rung.searcher.ops import Close, Operation, ValidateAfter

if TYPE_CHECKING:
    from rung.searcher.config import CustomSearcher
    from rung.searcher.events import ExitedReason
    from rung.searcher.methods import SearchContext


class BreaksState(BaseModel):
    created: int = 0
    finished: int = 0


class BreaksAbove(SearchMethod[BreaksState]):
    name: ClassVar[str] = "breaks_above"
    State = BreaksState

    def __init__(self, config: CustomSearcher) -> None:
        self.max_length = config.max_length.units if config.max_length else 20
        self.max_trials = config.max_trials or 4
        self.max_concurrent = config.max_concurrent_trials or self.max_trials
        raise_above = config.options.get("raise_above", 100)
        self.raise_above = float(raise_above) if isinstance(raise_above, int | float) else 100.0
        self.state = BreaksState()

    def _next(self, ctx: SearchContext) -> list[Operation]:
        if self.state.created >= self.max_trials:
            return []
        self.state.created += 1
        create = ctx.create()
        return [
            create,
            ValidateAfter(request_id=create.request_id, length=self.max_length),
            Close(request_id=create.request_id),
        ]

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        ops: list[Operation] = []
        for _ in range(min(self.max_concurrent, self.max_trials)):
            ops += self._next(ctx)
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        if metric is not None and metric > self.raise_above:
            raise ValueError(f"metric {metric} is above {self.raise_above}")
        return []

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        self.state.finished += 1
        return self._next(ctx)

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        self.state.finished += 1
        return self._next(ctx)

    def progress(self, ctx: SearchContext) -> float:
        return min(self.state.finished / self.max_trials, 1.0)
