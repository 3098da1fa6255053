"""A search method that breaks on purpose, for the tests of the failure path.

A random search whose ``validation_completed`` raises for a metric above
``options.raise_above``, after it changed its own state (and the experiment's, which
counts the validation first): a transactional apply must undo both. With
``options.overflow_after: n``, starting its trial number n+1 overflows, as a sampler
computing ``base ** u`` would.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from rung.searcher.config import CustomSearcher
from rung.searcher.methods.base import SearchContext
from rung.searcher.methods.one_shot import OneShotSearch
from rung.searcher.ops import Create, Operation


class FragileState(BaseModel):
    created: int = 0
    validations: int = 0


class Fragile(OneShotSearch[FragileState]):
    name: ClassVar[str] = "fragile"
    State = FragileState

    def __init__(self, config: CustomSearcher) -> None:
        self.max_length = config.max_length.units if config.max_length else 10
        self.max_trials = config.max_trials or 4
        self.max_concurrent = config.max_concurrent_trials
        raise_above = config.options.get("raise_above", 0.9)
        self.raise_above = float(raise_above) if isinstance(raise_above, int | float) else 0.9
        overflow_after = config.options.get("overflow_after")
        self.overflow_after = overflow_after if isinstance(overflow_after, int) else None
        self.state = FragileState()

    def total_trials(self) -> int:
        return self.max_trials

    def next_trial(self, ctx: SearchContext) -> Create | None:
        if self.state.created >= self.max_trials:
            return None
        self.state.created += 1
        if self.overflow_after is not None and self.state.created > self.overflow_after:
            scale = 10.0 ** (400 + self.state.created)  # OverflowError, as base ** u would
            return ctx.create({"x": scale})
        return ctx.create()

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        self.state.validations += 1  # changed before it raises: the apply must undo it
        if metric is not None and metric > self.raise_above:
            raise ValueError(f"metric {metric} is above {self.raise_above}")
        return []
