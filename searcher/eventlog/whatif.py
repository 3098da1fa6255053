"""What-if: re-decide a recorded experiment with other searcher settings.

The log records every trial's metric at every length it validated. Trial ``k`` of an
experiment has the same hyperparameters under any searcher as long as the seed and the
hyperparameter space are the same, so another search method can be replayed against the
recorded results in the simulator. Where the new decisions need a result the log does not
have (a trial trained further than it was, or more trials), the what-if stops and says so.

With a model-based sampler (``gp``, ``tpe``) a trial's hyperparameters depend on the
results before it, in the order they came: the simulated workers' order is not the
cluster's, so a what-if is a re-run of the search on the recorded results, which stops
with a gap as soon as the model asks for a point the log does not have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from rung.broker.schemas import OpCompleted
from rung.searcher.config import ExperimentConfig
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog.records import InputRecord, Record
from rung.searcher.eventlog.replay import replay
from rung.searcher.simulate import SimulationResult, simulate
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["WhatIf", "WhatIfGapError", "what_if"]


class WhatIfGapError(SearcherError):
    """The new decisions need a result the log never recorded."""


@dataclass
class _RecordedResults:
    """The metric of each configuration at each length it was validated at."""

    results: dict[str, dict[int, float | None]]
    name: str = "recorded"
    max_length: int | None = None
    optimum: float | None = None

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float:
        key = json.dumps(hparams, sort_keys=True)
        known = self.results.get(key)
        if known is None:
            raise WhatIfGapError(
                f"the new search tries hyperparameters {key}, which the log "
                "never trained; keep the seed and the hyperparameters"
            )
        if length not in known:
            lengths = ", ".join(map(str, sorted(known))) or "none"
            raise WhatIfGapError(
                f"the new search trains {key} to length {length}, but the "
                f"log has it only at {lengths}"
            )
        value = known[length]
        return float("nan") if value is None else value


class WhatIf(BaseModel):
    model_config = ConfigDict(frozen=True)

    recorded_best: float | None
    recorded_trials: int
    recorded_length: int
    complete: bool
    gap: str | None
    result: SimulationResult | None


def _recorded(records: Sequence[Record]) -> tuple[_RecordedResults, ExperimentRun]:
    results: dict[str, dict[int, float | None]] = {}

    def collect(record: InputRecord, step: Step, run: ExperimentRun) -> None:
        body = record.input
        if isinstance(body, OpCompleted) and step.applied:
            hparams = run.experiment.trials[run.by_id[body.trial_id].request_id].hparams
            key = json.dumps(hparams, sort_keys=True)
            results.setdefault(key, {})[body.length] = body.metric

    run = replay(records, on_step=collect).run
    return _RecordedResults(results), run


def what_if(records: Sequence[Record], config: ExperimentConfig, workers: int = 4) -> WhatIf:
    recorded, run = _recorded(records)
    if config.experiment_seed is None:
        config = config.with_seed(run.experiment.seed)
    best = run.experiment.best_trial()
    # What was trained: a copy of another trial (population-based training) trained from
    # its source's checkpoint, not from the start.
    trained = sum(
        max(t.trained - (t.create.clone.length if t.create.clone else 0), 0)
        for t in run.experiment.trials.values()
    )
    try:
        result = simulate(config, recorded, workers=workers)
    except WhatIfGapError as exc:
        return WhatIf(
            recorded_best=best.metric if best else None,
            recorded_trials=len(run.trials),
            recorded_length=trained,
            complete=False,
            gap=str(exc),
            result=None,
        )
    return WhatIf(
        recorded_best=best.metric if best else None,
        recorded_trials=len(run.trials),
        recorded_length=trained,
        complete=True,
        gap=None,
        result=result,
    )
