"""The search-method interface: Determined 0.37's event handlers, in typed form.

A method is a deterministic state machine. Each handler receives the experiment's
:class:`SearchContext` and returns the operations it decides on. All of a method's state
lives in ``self.state``, a pydantic model that round-trips through JSON, so the
experiment can snapshot and restore it. Methods never do I/O, never read the clock and
never use a global random generator: new trials come from ``ctx.create()``, whose
randomness is derived from the experiment seed and the trial's index.

The interface is public: ``searcher: {name: custom, class: "module:Class"}`` loads a
subclass of :class:`SearchMethod` from the experiment's context directory.
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from pydantic import BaseModel, JsonValue

from rung.searcher.config import Hyperparameters
from rung.searcher.events import ExitedReason
from rung.searcher.ops import Clone, Create, Operation

__all__ = [
    "RULES",
    "WORST",
    "SearchContext",
    "SearchMethod",
    "TrialView",
    "budget_progress",
    "rank_value",
]

# The value an early-exited trial is ranked with: worse than any real result.
WORST = sys.float_info.max

# The revision of the built-in methods' rules. An experiment decides by the one it was
# created under, which its created record names, so that its log replays as it was
# decided (docs/eventlog.md): 1, Determined's, in logs without it; 2 (issue 18): a
# ``single``, ``random`` or ``grid`` search starts its next trial as soon as a trial's
# last validation is reported (its training is done), not once its process has exited.
# Only those methods and their subclasses depend on it (rung.searcher.methods.one_shot);
# any other custom method's attributes are its own.
RULES: Final = 2


def rank_value(metric: float | None, smaller_is_better: bool) -> float:  # noqa: FBT001
    """The metric as a value where smaller is better; unusable metrics rank worst."""
    if metric is None or not math.isfinite(metric):
        return WORST
    return metric if smaller_is_better else -metric


class TrialView(Protocol):
    """What a method may read about a trial. Read-only."""

    @property
    def request_id(self) -> str: ...
    @property
    def trial_id(self) -> int: ...
    @property
    def trained(self) -> int: ...
    @property
    def progress(self) -> float: ...
    @property
    def terminal(self) -> bool: ...
    @property
    def exited(self) -> ExitedReason | None: ...
    @property
    def hparams(self) -> dict[str, JsonValue]: ...


class SearchContext(Protocol):
    """The experiment's services to a method."""

    @property
    def hyperparameters(self) -> Hyperparameters: ...

    @property
    def trials(self) -> Mapping[str, TrialView]: ...

    def create(
        self,
        hparams: Mapping[str, JsonValue] | None = None,
        checkpoint: str | None = None,
        *,
        clone: Clone | None = None,
    ) -> Create:
        """A ``Create`` for the next trial index: sampled hyperparameters unless given."""
        ...

    def note(self, text: str) -> None:
        """Say why the method decided (or waits) as it does: logged with the input."""
        ...


S = TypeVar("S", bound=BaseModel)


class SearchMethod(ABC, Generic[S]):
    """Base class of every search method, built-in or custom."""

    name: ClassVar[str]
    # Whether the method hears of checkpoints and of trials pausing (checkpoint_saved
    # and trial_paused); only methods that copy checkpoints need to.
    follows_checkpoints: ClassVar[bool] = False
    State: type[S]
    state: S

    @abstractmethod
    def initial_operations(self, ctx: SearchContext) -> list[Operation]: ...

    def trial_created(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        return []

    @abstractmethod
    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]: ...

    def trial_closed(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        return []

    @abstractmethod
    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]: ...

    def trial_progress(self, ctx: SearchContext, request_id: str, units: float) -> list[Operation]:
        return []

    def checkpoint_saved(
        self, ctx: SearchContext, request_id: str, uuid: str, steps: int
    ) -> list[Operation]:
        """The trial saved checkpoint ``uuid`` at ``steps`` (``follows_checkpoints`` only)."""
        return []

    def trial_paused(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        """The trial's process exited between operations (``follows_checkpoints`` only)."""
        return []

    def round_timed_out(
        self, ctx: SearchContext, round_index: int, after_s: float
    ) -> list[Operation]:
        """A round has been open ``after_s`` seconds, its limit (methods with rounds)."""
        return []

    def round_limit(self) -> tuple[int, float] | None:
        """The open round and the seconds it may stay open, while one with a limit is
        open (the service times it and sends ``round_timed_out``); None otherwise."""
        return None

    def pinned(self, ctx: SearchContext) -> frozenset[str]:
        """Trials (request ids) whose latest checkpoint the method may still copy:
        garbage collection keeps it while they are pinned."""
        return frozenset()

    @abstractmethod
    def progress(self, ctx: SearchContext) -> float:
        """The search's progress in [0, 1]."""

    def snapshot(self) -> dict[str, Any]:
        return self.state.model_dump(mode="json")

    def restore(self, data: Mapping[str, Any]) -> None:
        self.state = self.State.model_validate(data)


def budget_progress(ctx: SearchContext, max_length: int, trials: int) -> float:
    """Units trained over the whole budget; a finished trial counts as ``max_length``."""
    if trials <= 0:
        return 1.0
    done = sum(
        max_length if t.terminal else min(max(t.progress, t.trained), max_length)
        for t in ctx.trials.values()
    )
    return min(done / (max_length * trials), 1.0)
