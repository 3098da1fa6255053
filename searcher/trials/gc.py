"""Checkpoint garbage collection: which checkpoints the ``checkpoint_storage`` policy no
longer keeps (:func:`to_delete`: plain data in, uuids out, in a deterministic order), and
the run's side of it (:class:`CheckpointCollector`: what it records, when it decides, the
``DeleteCheckpoints`` command). Pure and synchronous, like the rest of the lifecycle.

The rule is Determined's (``ExperimentCheckpointsToGCRaw``). A checkpoint's metric is the
searcher metric of the validation its trial reported at the checkpoint's
``steps_completed``. A checkpoint of a trial that is final is deleted when

* it is not among its trial's ``save_trial_latest`` latest (by ``steps_completed``;
  checkpoints saved at the same step rank alike), and
* it has no metric, or it is neither among the experiment's ``save_experiment_best`` best
  checkpoints (over every trial) nor among its trial's ``save_trial_best`` best,

unless it is protected: a pending resume needs it, a warm start or a clone (population-based
training) may still resume from it, or the search method pins its trial (it may still copy
that trial's latest checkpoint). Best is by the
searcher metric, smallest first unless ``smaller_is_better`` is false; ties go to the
lower trial id, then the earlier step, then the earlier save.

Deciding for a trial as soon as it is final gives what deciding at the experiment's end
would: a final trial's latest and best checkpoints do not change any more, and the
experiment's best ``save_experiment_best`` can only lose members to checkpoints that are
added later (a checkpoint outside them now stays outside them), because a checkpoint's
metric never changes once known (the first validation at its step counts).

Without ``save_experiment_best`` (Determined's default) each final trial is decided on its
own checkpoints alone, and those only change with an input that names the trial. So a
collection decides only the trials that may give something: those final since the last
one, those an input named since, and those that kept a checkpoint only because it was
protected; a trial's end costs those, not a pass over every trial (issue 18: 35 ms a
trial's end at 6,000 trials before, 0.1 ms after; ``python -m bench --only collect``).
The decision is the one over every trial (tests/unit/searcher/test_checkpoint_gc.py
compares the two step by step).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Set
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePath

from annotated_types import MaxLen
from pydantic import JsonValue

from rung.broker.schemas import CheckpointSaved, DeleteCheckpoints, MetricsReported
from rung.broker.schemas.envelope import Body
from rung.searcher.events import TrialClosed, TrialExitedEarly
from rung.searcher.ops import Shutdown
from rung.searcher.trials.base import RunBase
from rung.searcher.trials.model import ENDED, TERMINAL, Command, Step, TrialRuntime

__all__ = ["CheckpointCollector", "Policy", "Saved", "to_delete"]


# The most uuids one DeleteCheckpoints names (its schema's bound).
_DELETE_BATCH = next(
    m.max_length for m in DeleteCheckpoints.model_fields["uuids"].metadata if isinstance(m, MaxLen)
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How many checkpoints to keep (``checkpoint_storage``; Determined's defaults)."""

    experiment_best: int = 0
    trial_best: int = 1
    trial_latest: int = 1
    smaller_is_better: bool = True


@dataclass(frozen=True, slots=True)
class Saved:
    """One checkpoint: its trial, uuid, step, place in its trial's saves, and metric."""

    trial_id: int
    uuid: str
    steps: int
    order: int
    metric: float | None


def _best_first(checkpoint: Saved, sign: float) -> tuple[float, int, int, int]:
    assert checkpoint.metric is not None  # noqa: S101 (only validated ones are ranked)
    return (sign * checkpoint.metric, checkpoint.trial_id, checkpoint.steps, checkpoint.order)


def to_delete(
    checkpoints: Iterable[Saved],
    policy: Policy,
    *,
    final: Set[int],
    protected: Set[str] = frozenset(),
) -> list[str]:
    """The uuids to delete among ``checkpoints`` (all of the experiment's live ones), of
    the trials in ``final`` only, in trial and save order. A uuid that any trial keeps,
    or that is ``protected``, is never deleted."""
    return _decide(checkpoints, policy, final=final, protected=protected)[0]


def _decide(
    checkpoints: Iterable[Saved],
    policy: Policy,
    *,
    final: Set[int],
    protected: Set[str],
) -> tuple[list[str], set[int]]:
    """:func:`to_delete`'s uuids, and the final trials that keep a checkpoint only
    because it is protected (their decision may change when it no longer is)."""
    every = sorted(checkpoints, key=lambda c: (c.trial_id, c.order))
    sign = 1.0 if policy.smaller_is_better else -1.0
    validated = sorted(
        (c for c in every if c.metric is not None), key=lambda c: _best_first(c, sign)
    )
    keep: set[str] = {c.uuid for c in validated[: policy.experiment_best]}
    by_trial: dict[int, list[Saved]] = {}
    for checkpoint in every:
        by_trial.setdefault(checkpoint.trial_id, []).append(checkpoint)
    best_in_trial: dict[int, int] = {}
    for checkpoint in validated:
        taken = best_in_trial.get(checkpoint.trial_id, 0)
        if taken < policy.trial_best:
            keep.add(checkpoint.uuid)
            best_in_trial[checkpoint.trial_id] = taken + 1
    for saved in by_trial.values():
        # rank() by steps_completed, latest first: a checkpoint's rank is one more than
        # the number of the trial's checkpoints saved at a later step.
        steps = sorted(c.steps for c in saved)
        for checkpoint in saved:
            rank = 1 + len(steps) - bisect_right(steps, checkpoint.steps)
            if rank <= policy.trial_latest:
                keep.add(checkpoint.uuid)
    # A trial that is not final may still checkpoint: its checkpoints are decided later.
    keep.update(c.uuid for c in every if c.trial_id not in final)
    chosen: dict[str, None] = {}
    spared: set[int] = set()
    for checkpoint in every:
        if checkpoint.uuid in keep:
            continue
        if checkpoint.uuid in protected:
            spared.add(checkpoint.trial_id)
        else:
            chosen[checkpoint.uuid] = None
    return list(chosen), spared


class CheckpointCollector(RunBase):
    """The run's side of garbage collection: what it knows of checkpoints and metrics,
    and the ``DeleteCheckpoints`` it decides (the rules call :meth:`_collect`)."""

    @cached_property
    def collects_checkpoints(self) -> bool:
        """Whether this run deletes the checkpoints its policy does not keep: runs whose
        checkpoint root is their own (``<storage>/<experiment id>``), which every
        experiment created since per-experiment roots has. Logs written before keep their
        shared root, and replay the decisions they recorded: they never delete."""
        return PurePath(self.checkpoint_root).name == self.experiment_id

    def _searcher_metric(self, metrics: dict[str, JsonValue]) -> float | None:
        value = metrics.get(self.experiment.config.searcher.metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    def _gc_due(self, step: Step, body: Body | None) -> bool:
        """Whether ``step`` may have made checkpoints deletable: a trial or the
        experiment ended, or a trial that has ended reported a checkpoint or metrics."""
        if step.failed is not None or any(isinstance(op, Shutdown) for op in step.ops):
            return True
        if any(isinstance(e, TrialClosed | TrialExitedEarly) for e in step.applied):
            return True
        if isinstance(body, CheckpointSaved | MetricsReported) and step.ignored is None:
            trial = self.by_id.get(body.trial_id)
            return trial is not None and (trial.state in TERMINAL or self.state in ENDED)
        return False

    def _policy(self) -> Policy:
        config = self.experiment.config
        storage = config.checkpoint_storage
        smaller = config.searcher.smaller_is_better
        if storage is None:
            return Policy(smaller_is_better=smaller)  # no checkpoint_storage: the defaults
        return Policy(
            storage.save_experiment_best,
            storage.save_trial_best,
            storage.save_trial_latest,
            smaller,
        )

    def _protected(self, uuids: Set[str] | None = None) -> set[str]:
        """What no policy deletes (of ``uuids``; None: of every checkpoint): the latest
        checkpoint of a trial that can still resume, a warm start's source always
        (another experiment's checkpoint, even should a script report it as its own), a
        clone's source while the clone may resume from it, and the latest checkpoint of
        a trial the search method may still copy."""
        # Only a trial that is not final resumes, and each is among gc_live or gc_named.
        resuming = self.trials.values() if uuids is None else self._maybe_live()
        protected = {
            t.latest_checkpoint
            for t in resuming
            if t.state not in TERMINAL and t.latest_checkpoint is not None
        }
        warm_start = getattr(self.experiment.config.searcher, "source_checkpoint_uuid", None)
        records = self.experiment.trials
        for uuid in self.gc_sources if uuids is None else self.gc_sources.keys() & uuids:
            if uuid == warm_start or any(
                not records[request_id].terminal for request_id in self.gc_sources[uuid]
            ):
                protected.add(uuid)
        for request_id in self.experiment.method.pinned(self.experiment):
            pinned = self.trials.get(request_id)
            if pinned is not None and pinned.latest_checkpoint is not None:
                protected.add(pinned.latest_checkpoint)
        return protected if uuids is None else protected & uuids

    def _maybe_live(self) -> list[TrialRuntime]:
        """Every trial that is not final, and some that are: those created since they
        were last seen final, and those an input named since the last collection (the
        only way back from final, were there one)."""
        return [self.by_id[trial_id] for trial_id in self.gc_live | self.gc_named]

    def _collect(self, step: Step, body: Body | None = None) -> None:
        """Delete what the checkpoint policy no longer keeps, of the trials that have
        ended (all trials once the experiment has ended): a ``DeleteCheckpoints`` to the
        work queue, part of the step like any decision. Never deleted: the latest
        checkpoint of a trial that can still resume, and any warm-start source."""
        if not self.collects_checkpoints:
            return
        if (named := getattr(body, "trial_id", None)) in self.by_id:
            self.gc_named.add(named)  # the only way a trial's checkpoints change
        if not self._gc_due(step, body):
            return
        ended = self.state in ENDED
        if not self.held_checkpoints and not ended:
            return  # nothing to delete, nor to forget (issue 18: no pass over every trial)
        policy = self._policy()
        # Each final trial on its own checkpoints alone (no experiment's best): only those
        # that may have changed since they were decided (see the module's notes).
        each_alone = policy.experiment_best == 0 and not ended
        if each_alone:
            maybe = self.gc_live | self.gc_named | self.gc_spared
            decided = [self.by_id[i] for i in sorted(maybe) if self.by_id[i].state in TERMINAL]
            ranked: Iterable[TrialRuntime] = decided
        else:
            decided = [t for t in self.trials.values() if ended or t.state in TERMINAL]
            ranked = self.trials.values()  # where they rank against each other
        saved = [
            Saved(t.trial_id, uuid, steps, order, t.validations.get(steps))
            for t in ranked
            for order, (uuid, steps) in enumerate(t.checkpoints.items())
        ]
        protected = self._protected({c.uuid for c in saved} if each_alone else None)
        final = {t.trial_id for t in decided}
        uuids, spared = _decide(saved, policy, final=final, protected=protected)
        gone = set(uuids)
        for trial in decided:
            for uuid in gone.intersection(trial.checkpoints):
                del trial.checkpoints[uuid]
                self.checkpoint_owner.pop(uuid, None)
                self.held_checkpoints -= 1
            if trial.latest_checkpoint in gone:
                trial.latest_checkpoint = None
            if ended:  # nothing ranks against them any more but their checkpoints
                live = set(trial.checkpoints.values())
                trial.validations = {k: v for k, v in trial.validations.items() if k in live}
        self.gc_live = {
            i for i in self.gc_live | self.gc_named if self.by_id[i].state not in TERMINAL
        }
        self.gc_named.clear()
        self.gc_spared = (self.gc_spared - final) | spared
        for start in range(0, len(uuids), _DELETE_BATCH):
            batch = uuids[start : start + _DELETE_BATCH]
            step.commands.append(
                Command(
                    DeleteCheckpoints(
                        experiment_id=self.experiment_id,
                        checkpoint_root=self.checkpoint_root,
                        uuids=batch,
                    )
                )
            )
