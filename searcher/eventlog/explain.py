"""Words for a replayed log: what happened, what was decided, and why, in the searcher's
own terms ("trial 7 promoted to rung 1 (length 100): rank 2 of 9 at rung 0, cutoff top 2").
"""

from __future__ import annotations

import json
from typing import Any

from rung.broker.schemas import (
    CheckpointSaved,
    CloseTrial,
    ContinueTrial,
    ControlExperiment,
    DeleteCheckpoints,
    ExitReason,
    KillTrial,
    LogLines,
    MetricsReported,
    OpCompleted,
    PauseTrial,
    PreemptTrial,
    ProgressReported,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.searcher.eventlog.records import InputRecord
from rung.searcher.events import ExitedReason
from rung.searcher.methods import AdaptiveASHA, PromotionASHA, SearchMethod, StoppingASHA
from rung.searcher.ops import Close, Create, Shutdown, ValidateAfter
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["NOISE", "describe_input", "entry", "explain_step", "print_entry", "state_at"]

# Inputs the default timeline leaves out (``--all`` shows them).
NOISE = (LogLines, MetricsReported, ProgressReported, CheckpointSaved)

_Asha = PromotionASHA | StoppingASHA


def _asha_for(method: SearchMethod[Any], request_id: str) -> _Asha | None:
    if isinstance(method, PromotionASHA | StoppingASHA):
        return method if request_id in method.state.trial_rungs else None
    if isinstance(method, AdaptiveASHA):
        index = method.state.trial_brackets.get(request_id)
        bracket = method.brackets[index] if index is not None else None
        return bracket if isinstance(bracket, PromotionASHA | StoppingASHA) else None
    return None


def _rank(asha: _Asha, rung: int, request_id: str) -> str:
    results = asha.state.rungs[rung].results
    position = next((i for i, e in enumerate(results) if e.request_id == request_id), None)
    if position is None:
        return ""
    quota = int(len(results) / asha.params.divisor)
    if isinstance(asha, StoppingASHA):
        quota = max(quota, 1)
    return f"rank {position + 1} of {len(results)} at rung {rung}, cutoff top {quota}"


def describe_input(record: InputRecord, run: ExperimentRun) -> str:  # noqa: PLR0911
    body = record.input
    match body:
        case None:
            config = run.experiment.config
            sampler = getattr(config.searcher, "sampler", None)
            sampled = f", sampler {sampler.name}" if sampler and sampler.name != "random" else ""
            return (
                f"experiment {run.experiment_id} started: searcher {config.searcher.name}, "
                f"seed {config.experiment_seed}{sampled}"
            )
        case TrialStarted():
            return f"trial {body.trial_id} attempt {body.attempt} started on {body.worker_id}"
        case OpCompleted():
            return f"trial {body.trial_id} reached length {body.length}: metric {body.metric}"
        case TrialExited():
            code = f", exit {body.exit_code}" if body.exit_code not in (None, 0) else ""
            return f"trial {body.trial_id} attempt {body.attempt} exited: {body.reason}{code}"
        case CheckpointSaved():
            return (
                f"trial {body.trial_id} saved checkpoint {body.uuid[:8]} at {body.steps_completed}"
            )
        case MetricsReported():
            return f"trial {body.trial_id} {body.group} metrics at {body.steps_completed}"
        case ProgressReported():
            return f"trial {body.trial_id} progress {body.units:g}"
        case LogLines():
            return f"trial {body.trial_id}: {len(body.lines)} log lines"
        case ControlExperiment():
            return f"a user asked to {body.action} the experiment (now {run.state})"
    return body.type


def _explain_ops(step: Step, run: ExperimentRun) -> list[str]:
    method = run.experiment.method
    trials = run.experiment.trials
    lines: list[str] = []
    for op in step.ops:
        match op:
            case Create():
                trial_id = trials[op.request_id].trial_id
                lines.append(f"trial {trial_id} created: {json.dumps(op.hparams)}")
                if op.suggestion is not None:
                    lines.append(f"trial {trial_id} hyperparameters {op.suggestion.describe()}")
            case ValidateAfter():
                trial_id = trials[op.request_id].trial_id
                asha = _asha_for(method, op.request_id)
                rung = asha.state.trial_rungs.get(op.request_id, 0) if asha else 0
                if asha is not None and rung > 0:
                    lines.append(
                        f"trial {trial_id} promoted to rung {rung} (length "
                        f"{op.length}): {_rank(asha, rung - 1, op.request_id)}"
                    )
                else:
                    lines.append(f"trial {trial_id} to train to length {op.length}")
            case Close():
                lines.append(f"trial {trials[op.request_id].trial_id} closed")
            case Shutdown() if op.failure and step.failed:
                lines.append(f"experiment failed: {step.failed}")
            case Shutdown():
                what = "failed" if op.failure else "canceled" if op.cancel else "completed"
                lines.append(f"experiment {what}")
    return lines


def _explain_commands(step: Step, run: ExperimentRun) -> list[str]:
    lines: list[str] = []
    for command in step.commands:
        body, worker = command.body, command.worker_id
        match body:
            case RunTrial():
                source = (
                    f" from checkpoint {body.latest_checkpoint[:8]}"
                    if body.latest_checkpoint
                    else ""
                )
                lines.append(
                    f"-> work queue: run trial {body.trial_id} attempt {body.attempt} "
                    f"to length {body.length}{source}"
                )
            case ContinueTrial():
                lines.append(
                    f"-> {worker}: trial {body.trial_id} continues to length {body.length}"
                )
            case PauseTrial():
                request_id = run.by_id[body.trial_id].request_id
                asha = _asha_for(run.experiment.method, request_id)
                why = ""
                if asha is not None:
                    why = f": {_rank(asha, asha.state.trial_rungs[request_id], request_id)}"
                lines.append(f"-> {worker}: trial {body.trial_id} paused{why}")
            case CloseTrial():
                lines.append(f"-> {worker}: trial {body.trial_id} closed")
            case PreemptTrial():
                lines.append(f"-> {worker}: trial {body.trial_id} preempted")
            case KillTrial():
                lines.append(
                    f"-> {worker}: trial {body.trial_id} attempt {body.attempt} process killed"
                )
            case DeleteCheckpoints():
                lines.append(
                    f"-> work queue: delete {len(body.uuids)} checkpoint(s) the "
                    "checkpoint_storage policy does not keep"
                )
    return lines


def explain_step(record: InputRecord, step: Step, run: ExperimentRun) -> list[str]:
    """One line per decision, with the reason where the search method has one."""
    lines = _explain_ops(step, run) + _explain_commands(step, run)
    body = record.input
    if isinstance(body, TrialExited) and body.reason is ExitReason.ERRORED:
        request_id = run.by_id[body.trial_id].request_id
        if run.experiment.trials[request_id].exited is ExitedReason.ERRORED:
            asha = _asha_for(run.experiment.method, request_id)
            worst = ", counted as worst" if asha is not None else ""
            lines.append(f"trial {body.trial_id} errored (exit {body.exit_code}){worst}")
    if step.ignored:
        lines.append(f"ignored: {step.ignored}")
    return lines


def entry(
    record: InputRecord, step: Step, run: ExperimentRun, *, show_all: bool = False
) -> dict[str, Any] | None:
    """A timeline entry for one input, or None for noise the default timeline hides."""
    if not show_all and isinstance(record.input, NOISE) and not step.commands and not step.ops:
        return None
    return {
        "seq": record.seq,
        "event": describe_input(record, run),
        "decisions": explain_step(record, step, run),
    }


def print_entry(item: dict[str, Any]) -> str:
    lines = [f"{item['seq']:>6}  {item['event']}"]
    lines += [f"        {line}" for line in item["decisions"]]
    return "\n".join(lines)


def state_at(run: ExperimentRun) -> dict[str, Any]:
    """The complete state: trials, rungs with their sorted metrics, pending operations."""
    experiment = run.experiment
    trials = [
        {
            "trial_id": t.trial_id,
            "state": t.state,
            "attempt": t.attempt,
            "worker_id": t.worker_id,
            "trained": experiment.trials[t.request_id].trained,
            "target": t.target,
            "metric": experiment.trials[t.request_id].metric,
            "latest_checkpoint": t.latest_checkpoint,
            "restarts": t.restarts,
        }
        for t in run.trials.values()
    ]
    ids = {rid: record.trial_id for rid, record in experiment.trials.items()}
    method = experiment.method
    brackets: list[_Asha] = []
    if isinstance(method, PromotionASHA | StoppingASHA):
        brackets = [method]
    elif isinstance(method, AdaptiveASHA):
        brackets = [b for b in method.brackets if isinstance(b, PromotionASHA | StoppingASHA)]
    rungs = [
        [
            {
                "rung": index,
                "length": rung.length,
                "results": [[ids.get(e.request_id), e.value] for e in rung.results],
                "training": sorted(ids.get(r, 0) for r in rung.running),
            }
            for index, rung in enumerate(bracket.state.rungs)
        ]
        for bracket in brackets
    ]
    return {
        "experiment_id": run.experiment_id,
        "state": run.state,
        "progress": experiment.progress(),
        "trials": trials,
        "brackets": rungs,
        "pending_ops": [
            {"trial_id": ids[op.request_id], "length": op.length}
            for op in experiment.outstanding_ops()
        ],
        "queued_for_admission": [ids[rid] for rid in experiment.state.queue],
    }
