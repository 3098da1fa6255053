"""Words for a replayed log: what happened, what was decided, and why, in the searcher's
own terms ("trial 7 promoted to rung 1 (length 100): rank 2 of 9 at rung 0, cutoff top 2";
"trial 12 continues from trial 3's checkpoint at length 40 (rank 1 of 8); replaces trial
7 (bottom 25%): lr 0.01 -> 0.012 (x1.2)"), with what the search method noted about each
input (why it decided, or waits, as it does).
"""

from __future__ import annotations

import bisect
import json
from typing import Any

from rung.broker.schemas import (
    CheckpointSaved,
    CloseTrial,
    ContinueTrial,
    ControlExperiment,
    DeleteCheckpoints,
    ExitReason,
    GangPlanned,
    KillTrial,
    LogLines,
    MetricsReported,
    OpCompleted,
    PauseTrial,
    PreemptTrial,
    ProgressReported,
    ReserveSlots,
    RoundTimeout,
    RunTrial,
    SlotsReserved,
    TrialExited,
    TrialStarted,
)
from rung.searcher.eventlog.records import InputRecord
from rung.searcher.events import ExitedReason
from rung.searcher.methods import AdaptiveASHA, PromotionASHA, SearchMethod, StoppingASHA
from rung.searcher.methods.base import rank_value
from rung.searcher.ops import Close, Create, Shutdown, ValidateAfter
from rung.searcher.trials import ExperimentRun, Step

__all__ = [
    "NOISE",
    "Decision",
    "asha_brackets",
    "decisions",
    "describe_input",
    "entry",
    "explain_step",
    "print_entry",
    "quota",
    "state_at",
]

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


def asha_brackets(method: SearchMethod[Any]) -> list[_Asha]:
    """The ASHA brackets of a search method, in order (none for other methods)."""
    if isinstance(method, PromotionASHA | StoppingASHA):
        return [method]
    if isinstance(method, AdaptiveASHA):
        return [b for b in method.brackets if isinstance(b, PromotionASHA | StoppingASHA)]
    return []


def quota(asha: _Asha, results: int) -> int:
    """How many of a rung's ``results`` best are promoted (or go on) now."""
    count = int(results / asha.params.divisor)
    return max(count, 1) if isinstance(asha, StoppingASHA) else count


def _position(results: list[Any], request_id: str, value: float | None) -> int | None:
    """Where ``request_id`` is in a rung's results (sorted by value): found by bisection
    when its ``value`` is known and right, else by a scan."""
    if value is not None:
        index = bisect.bisect_left(results, value, key=lambda e: e.value)
        while index < len(results) and results[index].value == value:
            if results[index].request_id == request_id:
                return index
            index += 1
    return next((i for i, e in enumerate(results) if e.request_id == request_id), None)


def _rank(asha: _Asha, rung: int, request_id: str, run: ExperimentRun | None = None) -> str:
    """The trial's rank at the rung; ``run`` gives its latest metric, which is its value
    there when it was just ranked or promoted (a bisection instead of a scan)."""
    results = asha.state.rungs[rung].results
    value = None
    if run is not None and request_id in run.experiment.trials:
        metric = run.experiment.trials[request_id].metric
        value = rank_value(metric, asha.params.smaller_is_better)
    position = _position(results, request_id, value)
    if position is None:
        return ""
    cutoff = quota(asha, len(results))
    return f"rank {position + 1} of {len(results)} at rung {rung}, cutoff top {cutoff}"


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
        case GangPlanned():
            where = ", ".join(f"{part.worker_id} ({part.slots})" for part in body.parts)
            return f"trial {body.trial_id} placed on {len(body.parts)} worker(s): {where}"
        case SlotsReserved():
            return (
                f"{body.worker_id} holds the slots of part {body.part} of trial "
                f"{body.trial_id} attempt {body.attempt}"
            )
        case RoundTimeout():
            return f"round {body.round} of the search timed out after {body.after_s:g} s"
    return body.type


Decision = tuple[int | None, str]


def _replacements(step: Step, run: ExperimentRun) -> dict[str, str]:
    """Why each trial the step's clones replace is closed: "replaced by trial 12 (bottom
    25%)" (population-based training), by the replaced trial's request id."""
    trials = run.experiment.trials
    out: dict[str, str] = {}
    for op in step.ops:
        if isinstance(op, Create) and op.clone is not None and op.clone.replaces is not None:
            clone_id = trials[op.request_id].trial_id
            out[op.clone.replaces] = f"replaced by trial {clone_id} ({op.clone.cut})"
    return out


def _explain_ops(step: Step, run: ExperimentRun) -> list[Decision]:
    method = run.experiment.method
    trials = run.experiment.trials
    replaced = _replacements(step, run)
    lines: list[Decision] = []
    for op in step.ops:
        match op:
            case Create():
                trial_id = trials[op.request_id].trial_id
                lines.append((trial_id, f"trial {trial_id} created: {json.dumps(op.hparams)}"))
                if op.suggestion is not None:
                    described = op.suggestion.describe()
                    lines.append((trial_id, f"trial {trial_id} hyperparameters {described}"))
                if op.clone is not None:
                    lines.append((trial_id, op.clone.describe(trial_id)))
            case ValidateAfter():
                trial_id = trials[op.request_id].trial_id
                asha = _asha_for(method, op.request_id)
                rung = asha.state.trial_rungs.get(op.request_id, 0) if asha else 0
                if asha is not None and rung > 0:
                    rank = _rank(asha, rung - 1, op.request_id, run)
                    text = f"trial {trial_id} promoted to rung {rung} (length {op.length}): {rank}"
                else:
                    text = f"trial {trial_id} to train to length {op.length}"
                lines.append((trial_id, text))
            case Close():
                trial_id = trials[op.request_id].trial_id
                why = replaced.get(op.request_id)
                lines.append((trial_id, f"trial {trial_id} closed" + (f": {why}" if why else "")))
            case Shutdown() if op.failure and step.failed:
                lines.append((None, f"experiment failed: {step.failed}"))
            case Shutdown():
                what = "failed" if op.failure else "canceled" if op.cancel else "completed"
                lines.append((None, f"experiment {what}"))
    return lines


def _explain_commands(step: Step, run: ExperimentRun) -> list[Decision]:
    lines: list[Decision] = []
    for command in step.commands:
        text = _explain_command(command.body, command.worker_id, run)
        if text is not None:
            lines.append((getattr(command.body, "trial_id", None), text))
    return lines


def _explain_command(  # noqa: PLR0911 (one line per kind of command)
    body: object, worker: str | None, run: ExperimentRun
) -> str | None:
    match body:
        case RunTrial():
            source = (
                f" from checkpoint {body.latest_checkpoint[:8]}" if body.latest_checkpoint else ""
            )
            where = "work queue" if worker is None else worker
            part = "" if body.gang is None else f" (part {body.gang.rank})"
            return (
                f"-> {where}: run trial {body.trial_id} attempt {body.attempt}{part} "
                f"to length {body.length}{source}"
            )
        case ReserveSlots():
            return (
                f"-> {worker}: hold {body.slots} slot(s) for part {body.part} of trial "
                f"{body.trial_id} attempt {body.attempt}"
            )
        case ContinueTrial():
            return f"-> {worker}: trial {body.trial_id} continues to length {body.length}"
        case PauseTrial():
            trial = run.by_id.get(body.trial_id)
            asha = _asha_for(run.experiment.method, trial.request_id) if trial else None
            why = ""
            if asha is not None and trial is not None:
                request_id = trial.request_id
                why = f": {_rank(asha, asha.state.trial_rungs[request_id], request_id, run)}"
            return f"-> {worker}: trial {body.trial_id} paused{why}"
        case CloseTrial():
            return f"-> {worker}: trial {body.trial_id} closed"
        case PreemptTrial():
            return f"-> {worker}: trial {body.trial_id} preempted"
        case KillTrial():
            return f"-> {worker}: trial {body.trial_id} attempt {body.attempt} process killed"
        case DeleteCheckpoints():
            return (
                f"-> work queue: delete {len(body.uuids)} checkpoint(s) the "
                "checkpoint_storage policy does not keep"
            )
    return None


def explain_step(record: InputRecord, step: Step, run: ExperimentRun) -> list[str]:
    """One line per decision, with the reason where the search method has one."""
    return [text for _, text in decisions(record, step, run)]


def decisions(record: InputRecord, step: Step, run: ExperimentRun) -> list[Decision]:
    """:func:`explain_step`'s lines, each with the trial it is about (None: the
    experiment's own), for views that file reasons under trials."""
    lines = _explain_ops(step, run) + _explain_commands(step, run)
    body = record.input
    trial = run.by_id.get(body.trial_id) if isinstance(body, TrialExited) else None
    if (
        isinstance(body, TrialExited)
        and body.reason is ExitReason.ERRORED
        and not step.ignored
        and trial is not None
    ):
        request_id = trial.request_id
        if run.experiment.trials[request_id].exited is ExitedReason.ERRORED:
            asha = _asha_for(run.experiment.method, request_id)
            worst = ", counted as worst" if asha is not None else ""
            text = f"trial {body.trial_id} errored (exit {body.exit_code}){worst}"
            lines.append((body.trial_id, text))
    if step.ignored:
        lines.append((getattr(body, "trial_id", None), f"ignored: {step.ignored}"))
    return lines


def entry(
    record: InputRecord, step: Step, run: ExperimentRun, *, show_all: bool = False
) -> dict[str, Any] | None:
    """A timeline entry for one input, or None for noise the default timeline hides: its
    event, what the search method noted about it (``notes``, as logged), and the
    decisions it caused."""
    notes = list(record.notes or ())
    quiet = not step.commands and not step.ops and not notes
    if not show_all and isinstance(record.input, NOISE) and quiet:
        return None
    return {
        "seq": record.seq,
        "event": describe_input(record, run),
        "decisions": explain_step(record, step, run),
        "notes": notes,
    }


def print_entry(item: dict[str, Any]) -> str:
    """An entry as lines: the event, then each note ("note: ..."), then each decision."""
    lines = [f"{item['seq']:>6}  {item['event']}"]
    lines += [f"        note: {note}" for note in item.get("notes", ())]
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
    brackets = asha_brackets(method)
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
