"""``adaptive_asha``: several ASHA brackets side by side, hedging how early to stop.

Brackets and their sizes follow Determined 0.37 (see :mod:`searcher.rungs`): ``mode``
picks how many rungs each bracket has, trials are split so each bracket gets a similar
length budget, and the concurrency is split evenly. Each bracket is an independent
ASHA; events are routed to the bracket that created the trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from rung.searcher.config import AdaptiveASHASearcher
from rung.searcher.events import ExitedReason
from rung.searcher.methods.asha import ASHAParams, build_asha
from rung.searcher.methods.base import SearchContext, SearchMethod
from rung.searcher.ops import Create, Operation
from rung.searcher.rungs import bracket_concurrency, bracket_rung_counts, bracket_trials

__all__ = ["AdaptiveASHA", "TournamentState", "plan_brackets"]


def plan_brackets(config: AdaptiveASHASearcher) -> list[ASHAParams]:
    """The brackets of an adaptive ASHA search, most aggressive first."""
    counts = sorted(config.bracket_rungs, reverse=True) or bracket_rung_counts(
        config.max_rungs,
        config.max_length.units,
        config.max_trials,
        config.divisor,
        config.mode,
    )
    trials = bracket_trials(config.max_trials, config.divisor, counts)
    concurrency = bracket_concurrency(config.max_concurrent_trials, config.divisor, trials)
    return [
        ASHAParams(
            num_rungs=rungs,
            max_trials=n,
            max_concurrent=c,
            divisor=config.divisor,
            max_length=config.max_length.units,
            smaller_is_better=config.smaller_is_better,
            checkpoint=config.source_checkpoint_uuid,
        )
        for rungs, n, c in zip(counts, trials, concurrency, strict=True)
    ]


class TournamentState(BaseModel):
    # The bracket each trial belongs to.
    trial_brackets: dict[str, int] = Field(default_factory=dict)


class AdaptiveASHA(SearchMethod[TournamentState]):
    name: ClassVar[str] = "adaptive_asha"
    State = TournamentState

    def __init__(self, config: AdaptiveASHASearcher) -> None:
        self.brackets = [build_asha(p, stop_once=config.stop_once) for p in plan_brackets(config)]
        self.state = TournamentState()

    def _register(self, bracket: int, ops: list[Operation]) -> list[Operation]:
        for op in ops:
            if isinstance(op, Create):
                self.state.trial_brackets[op.request_id] = bracket
        return ops

    def _route(self, request_id: str) -> int | None:
        return self.state.trial_brackets.get(request_id)

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        ops: list[Operation] = []
        for index, bracket in enumerate(self.brackets):
            ops += self._register(index, bracket.initial_operations(ctx))
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        index = self._route(request_id)
        if index is None:
            return []
        ops = self.brackets[index].validation_completed(ctx, request_id, metric, length)
        return self._register(index, ops)

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        index = self._route(request_id)
        if index is None:
            return []
        return self._register(index, self.brackets[index].trial_closed(ctx, request_id))

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        index = self._route(request_id)
        if index is None:
            return []
        ops = self.brackets[index].trial_exited_early(ctx, request_id, reason)
        return self._register(index, ops)

    def progress(self, ctx: SearchContext) -> float:
        return sum(b.progress(ctx) for b in self.brackets) / len(self.brackets)

    def snapshot(self) -> dict[str, Any]:
        return {
            "tournament": self.state.model_dump(mode="json"),
            "brackets": [b.snapshot() for b in self.brackets],
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.state = TournamentState.model_validate(data["tournament"])
        for bracket, sub in zip(self.brackets, data["brackets"], strict=True):
            bracket.restore(sub)
