"""A scripted cluster for tests and benchmarks: what well-behaved workers report next.

Like ``optuna.testing``, it ships with the package so that tests, benchmarks and users'
own custom search methods can drive an experiment without RabbitMQ or processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from random import Random

from rung.broker.schemas import ExitReason, OpCompleted, TrialExited, TrialStarted
from rung.broker.schemas.envelope import Body
from rung.searcher.trials import ExperimentRun, TrialRuntime

__all__ = ["scripted_event"]


def scripted_event(
    run: ExperimentRun,
    rng: Random | None = None,
    *,
    metric: float = 0.5,
    p_error: float = 0.0,
    p_preempt: float = 0.0,
    trials: Iterable[TrialRuntime] | None = None,
) -> Body | None:
    """The next event a worker would send, or None when nothing is running or queued.

    Without ``rng`` it is the first trial's next event and every operation succeeds; with
    one, a random trial reports, with a random metric and the given chances of faults.
    ``trials`` narrows the choice to those trials (a long run's unfinished ones, say).
    """
    candidates: list[Body] = []
    for trial in run.trials.values() if trials is None else trials:
        key = {
            "experiment_id": run.experiment_id,
            "trial_id": trial.trial_id,
            "attempt": trial.attempt,
            "worker_id": "w",
        }
        if trial.state == "QUEUED":
            candidates.append(TrialStarted(**key, slots=1))
        elif trial.state == "RUNNING" and trial.stopping is not None:
            reason = ExitReason.COMPLETED if trial.stopping == "close" else ExitReason.OUT_OF_OPS
            candidates.append(TrialExited(**key, reason=reason))
        elif trial.state == "RUNNING" and not trial.waiting and trial.target:
            roll = rng.random() if rng is not None else 1.0
            if roll < p_error:
                candidates.append(TrialExited(**key, reason=ExitReason.ERRORED, exit_code=1))
            elif roll < p_error + p_preempt:
                candidates.append(TrialExited(**key, reason=ExitReason.PREEMPTED))
            else:
                value = rng.uniform(0, 1) if rng is not None else metric
                candidates.append(OpCompleted(**key, length=trial.target, metric=value))
        if candidates and rng is None:
            break
    if not candidates:
        return None
    return rng.choice(candidates) if rng is not None else candidates[0]
