"""Trial lifecycle: where trials run, and what workers must be told. Pure and synchronous.

The experiment layer decides *what* each trial trains; this layer decides *how*, from
worker events and the experiment's operations:

* a trial with an operation and no live process is queued as work (``RunTrial``, a new
  attempt, resuming from its latest checkpoint);
* a running trial that completed its operation gets its next one (``ContinueTrial``), or
  is paused (``PauseTrial``: its process exits and frees its slots) or closed
  (``CloseTrial``);
* a paused trial that is promoted later is queued as work again;
* a user's control of the whole experiment: ``pause`` preempts the running trials (they
  checkpoint) and holds every trial that would run until ``activate``; ``cancel``
  preempts them and ends the experiment once they have stopped; ``kill`` stops their
  processes at once, without a checkpoint, and ends it now;
* a failure of the search (any exception from the search method or sampling code, or
  from this layer) is decided here too, by :meth:`ExperimentRun.fail`: the experiment is
  ERROR with the reason, its running trials are killed, its other trials end, and work
  already queued is stopped as soon as a worker starts it;
* exits are handled as Determined does: a non-zero exit restarts the trial from its latest
  checkpoint up to ``max_restarts`` times, counted per trial, then the trial errored; a
  preempted trial resumes without using a restart; InvalidHP and user-requested stops end
  the trial and tell the search method.

Checkpoint garbage collection (:mod:`rung.searcher.trials.gc`) is decided here too, when a
trial or the experiment ends: a ``DeleteCheckpoints`` of what Determined's
``save_experiment_best``/``save_trial_best``/``save_trial_latest`` do not keep, never a
checkpoint that a pending resume or a warm start needs.

Every event carries the trial's attempt number; events from any other attempt are stale
and ignored, which fences off a worker that was presumed dead.
"""

from rung.searcher.trials.model import (
    ENDED,
    TERMINAL,
    Command,
    ControlAction,
    RunState,
    Step,
    TrialRuntime,
    TrialState,
)
from rung.searcher.trials.run import ExperimentRun

__all__ = [
    "ENDED",
    "TERMINAL",
    "Command",
    "ControlAction",
    "ExperimentRun",
    "RunState",
    "Step",
    "TrialRuntime",
    "TrialState",
]
