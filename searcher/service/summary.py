"""Summaries of experiments and trials for clients."""

from __future__ import annotations

from rung.broker.schemas import ExperimentSummary, TrialSummary
from rung.searcher.service.workers import WorkerRegistry, waiting_reasons
from rung.searcher.trials import ExperimentRun, TrialRuntime

__all__ = ["summarise"]


def _trial(run: ExperimentRun, trial: TrialRuntime) -> TrialSummary:
    record = run.experiment.trials[trial.request_id]
    return TrialSummary(
        trial_id=trial.trial_id,
        request_id=trial.request_id,
        hparams=record.hparams,
        state=trial.state,
        length=record.trained,
        metric=record.metric,
        restarts=trial.restarts,
        attempt=trial.attempt,
        latest_checkpoint=trial.latest_checkpoint,
        worker_id=trial.worker_id,
        lineage=record.create.clone.model_dump(mode="json") if record.create.clone else None,
    )


def summarise(
    run: ExperimentRun,
    event_log: str,
    *,
    with_trials: bool = True,
    warnings: list[str] | None = None,
    workers: WorkerRegistry | None = None,
) -> ExperimentSummary:
    """The experiment as clients see it; given the worker registry, with the reasons its
    trials wait (no live worker can fit them)."""
    best = run.experiment.best_trial()
    trials = [_trial(run, t) for t in run.trials.values()] if with_trials else []
    return ExperimentSummary(
        experiment_id=run.experiment_id,
        name=run.experiment.config.name,
        state=run.state,
        progress=run.experiment.progress(),
        trials=trials,
        best_trial=_trial(run, run.trials[best.request_id]) if best is not None else None,
        event_log=event_log,
        warnings=list(warnings or []),
        labels=list(run.experiment.config.labels),
        description=run.experiment.config.description,
        message=f"the experiment failed: {run.error}" if run.error else "",
        waiting=waiting_reasons(run, workers.live()) if workers is not None else [],
    )
