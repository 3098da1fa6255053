"""``pbt``: population-based training, with Determined's fields and two modes.

A population of ``population_size`` trials trains ``length_per_round`` at a time. Every
copy is a new trial that continues from its source's latest checkpoint (``Create`` with
that ``checkpoint``, its reasons in ``Create.clone``) with explored hyperparameters
(:func:`rung.searcher.methods.explore.explore`); the trial it replaces is closed. A
trial's hyperparameters never change, so a restored checkpoint can never bring back the
old ones, and each clone is one logged decision that replay explains.

* **Synchronous** (Determined's ``pbt``). Round ``r`` trains every member to
  ``(r + 1) * length_per_round``. When every member has a result (or has failed), the
  members are ranked; the worst ``int(population_size * truncate_fraction)`` and every
  failed member are replaced by copies of the best, the i-th loser by the i-th best
  (cycling when failures make more losers than there are sources), and the rest
  continue. A source must have a checkpoint at the round's length: while its process
  still runs, the round waits for one (``checkpoint_saved``); once its process has
  exited without one (``trial_paused``) or the round timed out, the next best source is
  taken, with the reason in the log. With no source at all, the losers continue unchanged
  and failed members are replaced by new random trials. After the last round every member
  is closed.
* **Asynchronous** (as Ray Tune's). When a member reports the end of an interval it is
  ranked against every member's latest result: in the bottom ``quantile_fraction`` it is
  replaced by a copy of a member of the top ``quantile_fraction``, drawn at random among
  those whose checkpoint covers their latest result; otherwise it continues. Nothing
  waits: with no ready source, the member continues unchanged.

``round_timeout`` (synchronous only) arrives as :meth:`round_timed_out`, an input the
service sends: the stragglers of the round are closed and replaced as failed members.
No round waits on a trial that failed, was killed or was lost: a failed trial counts as
finished, and a lost one resumes from its checkpoint elsewhere.

At most ``population_size * (num_rounds + 1)`` trials are created: failed members are no
longer replaced once that many exist. Randomness (explore, the asynchronous draw of a
source) comes from generators seeded by the request ids involved, which derive from the
experiment seed: the same log always gives the same decisions.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from random import Random
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from rung.searcher.config import PBTMode, PBTSearcher
from rung.searcher.events import ExitedReason
from rung.searcher.methods.base import WORST, SearchContext, SearchMethod, rank_value
from rung.searcher.methods.explore import explore
from rung.searcher.ops import Clone, Close, Operation, ValidateAfter

__all__ = ["PBT", "PBTState"]


class Member(BaseModel):
    """What the method knows of one member of the population."""

    value: float | None = None  # its latest result as a rank value (smaller is better)
    length: int = 0  # the length of that result (the clone's start, before its first)
    checkpoint: str | None = None  # its latest checkpoint, and that checkpoint's length
    checkpoint_steps: int = -1
    paused: bool = False  # its process exited between operations: no checkpoint comes
    # Synchronous: it owes the open round a result (its operation to the round's end was
    # issued, and neither a result nor its end has come).
    owes: bool = False
    failed: bool = False  # it ended early, or timed out: it is replaced, never copied
    finished: bool = False  # asynchronous: it reached the last length and was closed


class PBTState(BaseModel):
    # The population, by request id, in the order the members joined.
    members: dict[str, Member] = Field(default_factory=dict)
    round: int = 0  # synchronous: the open round
    timed_out: int = -1  # synchronous: the latest round that timed out
    waiting: str | None = None  # synchronous: the note of the wait, while one lasts
    created: int = 0
    done: bool = False
    # Synchronous: how many members owe the open round a result (it ends at 0).
    pending: int = 0
    # Asynchronous: the members neither finished nor failed (the search ends at 0).
    live: int = 0


class PBT(SearchMethod[PBTState]):
    name: ClassVar[str] = "pbt"
    follows_checkpoints: ClassVar[bool] = True
    State = PBTState

    def __init__(self, config: PBTSearcher) -> None:
        self.config = config
        self.synchronous = config.mode is PBTMode.SYNCHRONOUS
        self.per_round = config.length_per_round.units
        self.max_length = self.per_round * config.num_rounds
        self.max_trials = config.population_size * (config.num_rounds + 1)
        self.state = PBTState()
        # Asynchronous: the scored members, best first, as (value, trial id, request id);
        # derived from the state (never stored), kept as results come in.
        self._order: list[tuple[float, int, str]] | None = None

    def restore(self, data: Mapping[str, Any]) -> None:
        super().restore(data)
        self._order = None

    # ------------------------------------------------------------------ helpers
    def _value(self, metric: float | None) -> float:
        return rank_value(metric, self.config.smaller_is_better)

    def _round_length(self) -> int:
        return (self.state.round + 1) * self.per_round

    def _next_length(self, length: int) -> int:
        """The next interval's end after ``length``: a multiple of the round's length."""
        return min((length // self.per_round + 1) * self.per_round, self.max_length)

    def _train(self, request_id: str, length: int) -> ValidateAfter:
        member = self.state.members[request_id]
        member.paused = False
        member.owes = self.synchronous
        return ValidateAfter(request_id=request_id, length=length)

    def _new(self, ctx: SearchContext, length: int | None = None) -> list[Operation]:
        """A new random member, trained from the start to ``length`` (one round)."""
        create = ctx.create(checkpoint=self.config.source_checkpoint_uuid)
        self.state.created += 1
        self.state.live += 1
        self.state.members[create.request_id] = Member()
        return [create, self._train(create.request_id, length or self.per_round)]

    def _trial(self, ctx: SearchContext, request_id: str) -> int:
        return ctx.trials[request_id].trial_id

    def _ranked(self, ctx: SearchContext, ids: Iterable[str]) -> list[str]:
        """Best first; ties go to the lower trial id."""
        members = self.state.members
        return sorted(ids, key=lambda r: (members[r].value or 0.0, self._trial(ctx, r)))

    @staticmethod
    def _rng(*parts: object) -> Random:
        digest = hashlib.sha256("/".join(["rung/pbt", *map(str, parts)]).encode()).digest()
        return Random(int.from_bytes(digest, "big"))

    def _ready(self, member: Member) -> bool:
        """Its checkpoint covers its latest result, and there is length left after it."""
        return (
            member.checkpoint is not None
            and member.checkpoint_steps >= member.length
            and member.checkpoint_steps < self.max_length
        )

    def _clone(
        self,
        ctx: SearchContext,
        source_id: str,
        *,
        rank: int,
        ranked: int,
        cut: str,
        replaces: str | None,
        length: int | None = None,
        note: str = "",
    ) -> list[Operation]:
        """A copy of ``source_id`` from its latest checkpoint, trained to ``length`` (by
        default the next interval's end); ``replaces`` is the trial it replaces."""
        source = self.state.members[source_id]
        assert source.checkpoint is not None  # noqa: S101 (only ready sources are copied)
        record = ctx.trials[source_id]
        rng = self._rng(source_id, replaces, source.checkpoint_steps, self.state.created)
        explore_config = self.config.explore_function
        hparams, changes = explore(
            record.hparams,
            ctx.hyperparameters,
            resample_probability=explore_config.resample_probability,
            perturb_factor=explore_config.perturb_factor,
            rng=rng,
        )
        clone = Clone(
            source=source_id,
            source_trial=record.trial_id,
            checkpoint=source.checkpoint,
            length=source.checkpoint_steps,
            rank=rank,
            ranked=ranked,
            cut=cut,
            replaces=replaces,
            replaces_trial=self._trial(ctx, replaces) if replaces is not None else None,
            round=self.state.round if self.synchronous else None,
            source_hparams=dict(record.hparams),
            changes=changes,
            note=note,
        )
        create = ctx.create(hparams, checkpoint=source.checkpoint, clone=clone)
        self.state.created += 1
        self.state.live += 1
        self.state.members[create.request_id] = Member(
            length=source.checkpoint_steps,
            checkpoint=source.checkpoint,
            checkpoint_steps=source.checkpoint_steps,
        )
        if length is None:
            length = self._next_length(source.checkpoint_steps)
        return [create, self._train(create.request_id, length)]

    # ------------------------------------------------------------------ handlers
    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        ops: list[Operation] = []
        for _ in range(self.config.population_size):
            ops += self._new(ctx)
        if self.synchronous:
            self.state.pending = self.config.population_size
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        member = self.state.members.get(request_id)
        if member is None or member.failed or self.state.done:
            return []  # a closed loser's or a timed-out straggler's late result
        if self.synchronous:
            if member.owes:
                member.owes = False
                self.state.pending -= 1
            member.value = self._value(metric)
            member.length = length
            return self._round_check(ctx)
        self._unrank(ctx, request_id)
        member.value = self._value(metric)
        member.length = length
        self._rank(ctx, request_id)
        return self._interval_ended(ctx, request_id)

    def checkpoint_saved(
        self, ctx: SearchContext, request_id: str, uuid: str, steps: int
    ) -> list[Operation]:
        member = self.state.members.get(request_id)
        if member is None or steps < member.checkpoint_steps:
            return []
        member.checkpoint = uuid
        member.checkpoint_steps = steps
        return self._round_check(ctx) if self.synchronous and self.state.waiting else []

    def trial_paused(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        member = self.state.members.get(request_id)
        if member is None:
            return []
        member.paused = True
        return self._round_check(ctx) if self.synchronous and self.state.waiting else []

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        member = self.state.members.get(request_id)
        if member is None or member.failed or member.finished or self.state.done:
            return []
        if self.synchronous:
            if member.owes:
                member.owes = False
                self.state.pending -= 1
            member.failed = True
            member.value = WORST
            return self._round_check(ctx)
        self._unrank(ctx, request_id)
        member.failed = True
        self.state.live -= 1
        return self._replace_failed(ctx, request_id, reason)

    def round_timed_out(
        self, ctx: SearchContext, round_index: int, after_s: float
    ) -> list[Operation]:
        """The service's timer: round ``round_index`` has been open ``after_s`` seconds."""
        state = self.state
        if not self.synchronous or state.done or round_index != state.round:
            return []
        state.timed_out = round_index
        end = self._round_length()
        ops: list[Operation] = []
        stragglers = [r for r, m in state.members.items() if m.owes]
        state.pending -= len(stragglers)
        for request_id in stragglers:
            member = state.members[request_id]
            member.owes = False
            member.failed = True
            member.value = WORST
            ops.append(Close(request_id=request_id))
        if stragglers:
            ctx.note(
                f"round {round_index} timed out after {after_s:g} s: "
                f"{_trials(ctx, stragglers)} had not reached length {end}; closed, and "
                "replaced as failed members"
            )
        return ops + self._round_check(ctx)

    def round_limit(self) -> tuple[int, float] | None:
        timeout = self.config.round_timeout
        if not self.synchronous or timeout is None or self.state.done:
            return None
        return self.state.round, timeout

    def pinned(self, ctx: SearchContext) -> frozenset[str]:
        if self.state.done:
            return frozenset()
        return frozenset(
            r for r, m in self.state.members.items() if not m.failed and not m.finished
        )

    def progress(self, ctx: SearchContext) -> float:
        if self.state.done:
            return 1.0
        members = [m for m in self.state.members.values() if not m.failed]
        if not members:
            return 0.0
        size = self.config.population_size
        trained = sum(min(m.length, self.max_length) for m in members)
        return min(trained / (size * self.max_length), 1.0)

    # ------------------------------------------------------------------ synchronous
    def _round_check(self, ctx: SearchContext) -> list[Operation]:
        """End the round once every member has its result or has failed."""
        state = self.state
        if state.done:
            return []
        if state.pending > 0:
            return []
        alive = [r for r, m in state.members.items() if not m.failed]
        if state.round + 1 >= self.config.num_rounds:
            state.done = True
            ctx.note(f"round {state.round} was the last: the population is closed")
            return [Close(request_id=r) for r in alive]
        return self._end_round(ctx, alive)

    def _end_round(self, ctx: SearchContext, alive: list[str]) -> list[Operation]:
        state = self.state
        ranked = self._ranked(ctx, alive)
        cut = int(self.config.population_size * self.config.truncate_fraction)
        cut = min(cut, max(len(ranked) - 1, 0))
        bottom = ranked[len(ranked) - cut :] if cut else []
        failed = [r for r, m in state.members.items() if m.failed]
        candidates = ranked[: len(ranked) - cut]
        losers = bottom[::-1] + failed  # worst first, then the failed members
        sources = self._sources(ctx, candidates, min(len(losers), len(candidates)))
        rank_of = {request_id: index for index, request_id in enumerate(ranked, start=1)}
        if sources is None:
            return []  # waiting for a source's checkpoint
        state.waiting = None
        percent = f"bottom {self.config.truncate_fraction:.0%}"
        ops: list[Operation] = []
        next_length = self._round_length() + self.per_round
        replaced: list[str] = []
        for index, loser in enumerate(losers):
            is_failed = state.members[loser].failed
            if sources and self._room(ctx, loser):
                if not is_failed:
                    ops.append(Close(request_id=loser))
                source, note = sources[index % len(sources)]
                ops += self._clone(
                    ctx,
                    source,
                    rank=rank_of[source],
                    ranked=len(ranked),
                    cut="failed" if is_failed else percent,
                    replaces=loser,
                    length=next_length,
                    note=note,
                )
                replaced.append(loser)
            elif is_failed and not sources and candidates and self._room(ctx, loser):
                ops += self._new(ctx, next_length)
                replaced.append(loser)
        if not sources and bottom:
            ctx.note(
                f"round {state.round}: no member has a checkpoint at length "
                f"{self._round_length()} to copy; {_trials(ctx, bottom)} continue unchanged"
            )
        gone = set(replaced)
        for loser in losers:
            if loser in gone or state.members[loser].failed:
                del state.members[loser]
        survivors = set(ranked) - set(losers)
        for request_id in state.members:
            if request_id in survivors:
                ops.append(self._train(request_id, next_length))
        # The losers that continue unchanged (no source): trained like the others.
        for request_id in bottom:
            if request_id not in gone and request_id in state.members:
                ops.append(self._train(request_id, next_length))
        state.round += 1
        state.pending = sum(1 for m in state.members.values() if m.owes)
        if not state.members:
            state.done = True
            ctx.note("every member of the population failed: the search ends")
        return ops

    def _room(self, ctx: SearchContext, loser: str) -> bool:
        """Whether another trial may be created; notes it when not."""
        if self.state.created < self.max_trials:
            return True
        ctx.note(
            f"{_trials(ctx, [loser])} is not replaced: the search created "
            f"{self.state.created} trials, population_size * (num_rounds + 1)"
        )
        return False

    def _sources(
        self, ctx: SearchContext, candidates: list[str], needed: int
    ) -> list[tuple[str, str]] | None:
        """The ``needed`` best candidates with a checkpoint at the round's end, each with
        the note of the better ones passed over; None while one may still checkpoint."""
        state = self.state
        end = self._round_length()
        chosen: list[tuple[str, str]] = []
        passed: list[str] = []
        for rank, request_id in enumerate(candidates, start=1):
            if len(chosen) >= needed:
                break
            member = state.members[request_id]
            trial = self._trial(ctx, request_id)
            if member.checkpoint is not None and member.checkpoint_steps >= end:
                chosen.append((request_id, "; ".join(passed)))
                passed = []
                continue
            if not member.paused and state.timed_out != state.round:
                state.waiting = (
                    f"round {state.round}: waiting for trial {trial}'s checkpoint at length "
                    f"{end} (rank {rank}), to copy it"
                )
                ctx.note(state.waiting)
                return None
            why = "its process exited without one" if member.paused else "the round timed out"
            passed.append(
                f"trial {trial} (rank {rank}) has no checkpoint at length {end}: {why}; "
                "the next best is taken"
            )
            ctx.note(passed[-1])
        return chosen

    # ------------------------------------------------------------------ asynchronous
    def _ordered(self, ctx: SearchContext) -> list[tuple[float, int, str]]:
        if self._order is None:
            self._order = sorted(
                (m.value, self._trial(ctx, r), r)
                for r, m in self.state.members.items()
                if m.value is not None and not m.failed and not m.finished
            )
        return self._order

    def _key(self, ctx: SearchContext, request_id: str) -> tuple[float, int, str] | None:
        member = self.state.members.get(request_id)
        if member is None or member.value is None or member.failed or member.finished:
            return None
        return (member.value, self._trial(ctx, request_id), request_id)

    def _unrank(self, ctx: SearchContext, request_id: str) -> None:
        key = self._key(ctx, request_id)
        order = self._ordered(ctx)
        if key is not None:
            index = bisect_left(order, key)
            if index < len(order) and order[index] == key:
                del order[index]

    def _rank(self, ctx: SearchContext, request_id: str) -> None:
        key = self._key(ctx, request_id)
        if key is not None:
            insort(self._ordered(ctx), key)

    def _interval_ended(self, ctx: SearchContext, request_id: str) -> list[Operation]:
        state = self.state
        member = state.members[request_id]
        if member.length >= self.max_length:
            self._unrank(ctx, request_id)  # nothing is left to copy from it
            member.finished = True
            state.live -= 1
            state.done = state.live == 0
            return [Close(request_id=request_id)]
        order = self._ordered(ctx)
        count = len(order)
        quantile = math.ceil(count * self.config.quantile)
        if quantile > count / 2:
            quantile = count // 2
        key = self._key(ctx, request_id)
        position = bisect_left(order, key) if key is not None else 0
        if quantile == 0 or position < count - quantile:
            return [self._train(request_id, self._next_length(member.length))]
        ready = [r for _, _, r in order[:quantile] if self._ready(state.members[r])]
        if not ready:
            ctx.note(
                f"{_trials(ctx, [request_id])} is in the bottom {self.config.quantile:.0%} at "
                f"length {member.length}, but no member of the top {self.config.quantile:.0%} "
                "has a checkpoint at its latest length: it continues unchanged"
            )
            return [self._train(request_id, self._next_length(member.length))]
        source = self._rng(request_id, member.length).choice(ready)
        if not self._room(ctx, request_id):
            return [self._train(request_id, self._next_length(member.length))]
        source_key = self._key(ctx, source)
        assert source_key is not None  # noqa: S101 (a ranked member)
        ops: list[Operation] = [Close(request_id=request_id)]
        ops += self._clone(
            ctx,
            source,
            rank=bisect_left(order, source_key) + 1,
            ranked=count,
            cut=f"bottom {self.config.quantile:.0%}",
            replaces=request_id,
        )
        self._unrank(ctx, request_id)
        del state.members[request_id]
        state.live -= 1
        return ops

    def _replace_failed(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        state = self.state
        del state.members[request_id]
        if state.live == 0:
            state.done = True
            return []
        if not self._room(ctx, request_id):
            return []
        order = self._ordered(ctx)
        ready = [r for _, _, r in order if self._ready(state.members[r])]
        if not ready:
            ctx.note(
                f"{_trials(ctx, [request_id])} ended ({reason.value}) and no member has a "
                "checkpoint to copy: a new random trial takes its place"
            )
            return self._new(ctx)
        top = ready[: max(math.ceil(len(ready) * self.config.quantile), 1)]
        source = self._rng(request_id, "failed").choice(top)
        source_key = self._key(ctx, source)
        assert source_key is not None  # noqa: S101 (a ranked member)
        return self._clone(
            ctx,
            source,
            rank=bisect_left(order, source_key) + 1,
            ranked=len(order),
            cut=f"failed ({reason.value})",
            replaces=request_id,
        )


def _trials(ctx: SearchContext, request_ids: Iterable[str]) -> str:
    ids = sorted(ctx.trials[r].trial_id for r in request_ids)
    names = ", ".join(str(i) for i in ids)
    return f"trial {names}" if len(ids) == 1 else f"trials {names}"
