"""The sampler interface: what to try next, given what every trial reported.

A sampler is part of the pure core. It is asked for the hyperparameters of trial
``index`` with :class:`SamplerData`, a read-only view of the experiment: every result
reported so far (by trial index and length, in the order they were logged), the trials
still training and the length they report next, and the experiment seed. Its randomness
comes from generators seeded from ``(experiment seed, index)``, and what it keeps
between calls (:class:`SamplerState`) is a fold of the results, so a suggestion is a
function of the log up to it.

It answers with a :class:`Suggested`: the hyperparameters and a :class:`Suggestion`, the
reason that goes into the log beside the trial's ``Create``. ``None`` means "draw at
random from the trial's own generator", which is what the ``random`` sampler does, so
its experiments are exactly Determined's (and their logs unchanged).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, JsonValue

from rung.searcher.config import Hyperparameters
from rung.searcher.ops import Suggestion

__all__ = [
    "Pending",
    "Result",
    "Sampler",
    "SamplerData",
    "SamplerState",
    "Suggested",
    "Suggestion",
    "sampler_rng",
]


class Result(BaseModel):
    """A trial's result at a length: ``value`` is to be minimised; None: it failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    length: int
    value: float | None


class SamplerState(BaseModel):
    """What a model-based sampler remembers: every result, in log order."""

    results: list[Result] = []


@dataclass(frozen=True, slots=True)
class Pending:
    """A trial that is training: its hyperparameters and the length it reports next."""

    hparams: Mapping[str, JsonValue]
    length: int


@dataclass(slots=True)
class SamplerData:
    """The experiment as a sampler sees it."""

    seed: int
    hyperparameters: Hyperparameters
    # The searcher's max_length (None for a custom method without one).
    max_length: int | None
    # The concurrency cap (0: none): how many trials may train at once.
    concurrency: int
    # The hyperparameters of trial ``index`` (any trial created so far).
    hparams_of: Callable[[int], Mapping[str, JsonValue]]
    pending: Sequence[Pending] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Suggested:
    hparams: dict[str, JsonValue]
    suggestion: Suggestion


def sampler_rng(seed: int, index: int, purpose: str) -> np.random.Generator:
    """A generator that is a function of the experiment seed, the index and its purpose."""
    digest = hashlib.sha256(f"rung/sampler/{purpose}/{seed}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


class Sampler(ABC):
    """Base class of every sampler."""

    name: ClassVar[str]
    # Bumped whenever a change makes the same log give other suggestions.
    version: ClassVar[int] = 1
    # Whether the sampler needs results (the random sampler does not keep any).
    keeps_results: ClassVar[bool] = True

    def __init__(self) -> None:
        self.state = SamplerState()

    @abstractmethod
    def suggest(self, index: int, data: SamplerData) -> Suggested | None:
        """The hyperparameters of trial ``index``; None: draw them at random."""

    def observe(self, index: int, length: int, value: float | None) -> None:
        """Trial ``index`` reported ``value`` (smaller is better) at ``length``."""
        if self.keeps_results:
            self.state.results.append(Result(index=index, length=length, value=value))

    def snapshot(self) -> dict[str, Any] | None:
        return self.state.model_dump(mode="json") if self.keeps_results else None

    def restore(self, data: Mapping[str, Any] | None) -> None:
        self.state = SamplerState.model_validate(data or {})
