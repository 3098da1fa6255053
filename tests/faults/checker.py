"""The one checker every fault scenario ends with (``shared/reference/rabbitmq.md`` §3.2).

After the experiment has ended, it reads the experiment's event log, its summary, the
dead-letter queue and the processes' logs, and asserts:

* **I1** every trial is accounted for: as many trials as the search planned, each in a
  final state, and the same trials in the log as in the summary;
* **I2** no op's effect is duplicated: every message is applied once; per trial, the
  lengths of the applied results strictly increase; no checkpoint is reported twice;
* **I3** per trial, the committed length never decreases: each attempt resumes from a
  checkpoint at or after the last one saved before it (a copy of another trial, from
  the checkpoint its source saved where the copy's ``Create`` says);
* **I4** the best trial is the one of the fault-free run, with the same metric;
* **I5** the log replays and verifies, and replaying it twice gives the same state;
* **I6** every dead-lettered message has a reason, and a process logged it;
* **I7** the experiment ended within the scenario's stated bound;
* **I8** what the running searcher reports equals what its log replays to: the summary
  that ``rung.Client``'s describe returns (the experiment's state, progress and message,
  each trial's state, attempt, restarts, length, metric, latest checkpoint and worker,
  the best trial) is the one :func:`summarise` makes of ``replay(read_log(log)).run``.
  The live state is a fold of the log only if every decision was logged and nothing
  else changed it, so this catches a mutation that skipped the log, a failure that
  was not recorded, or a recovery that rebuilt other state than the log holds.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung import Client
from rung.broker import RabbitBroker, Topology
from rung.broker.deadletters import DeadLetter, peek
from rung.broker.schemas import CheckpointSaved, ExperimentSummary, OpCompleted, RunTrial
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record, read_log, replay
from rung.searcher.ops import Create
from rung.searcher.service.summary import summarise
from tests.e2e.conftest import Cluster
from tests.support import AMQP_URL, wait_for_async

__all__ = ["Baseline", "Report", "check_invariants", "dead_letters"]

FINAL_TRIAL_STATES = frozenset({"COMPLETED", "ERRORED", "CANCELED"})
# How long I8 waits for the log to hold still across one describe (a few late records,
# such as the exits of killed trials, may still arrive after the experiment ended).
QUIET_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Baseline:
    """What the fault-free run ended with."""

    best_trial_id: int
    best_metric: float
    trials: int
    seconds: float


@dataclass
class Report:
    """What the checker saw, for the scenario's own assertions and for soak figures."""

    summary: dict[str, Any]
    records: list[Record]
    seconds: float
    attempts: int
    restarts: int
    dead_letters: list[DeadLetter] = field(default_factory=list)


async def _peek(namespace: str) -> list[DeadLetter]:
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="checker")
    await broker.start()
    try:
        return await peek(broker)
    finally:
        await broker.close()


def dead_letters(namespace: str) -> list[DeadLetter]:
    return asyncio.run(_peek(namespace))


def _inputs(records: list[Record], kind: type[Any]) -> list[tuple[InputRecord, Any]]:
    return [
        (r, r.input)
        for r in records
        if isinstance(r, InputRecord) and isinstance(r.input, kind) and r.ignored is None
    ]


def check_invariants(
    cluster: Cluster,
    experiment_id: str,
    *,
    bound_s: float,
    baseline: Baseline | None = None,
    planned_trials: int | None = None,
) -> Report:
    done = cluster.rung("experiment", "describe", experiment_id, "--json")
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    records = list(read_log(Path(summary["event_log"])))
    expected = planned_trials if planned_trials is not None else baseline and baseline.trials
    attempts = _accounted_for(summary, records, expected or None)  # I1
    _no_duplicated_effect(records)  # I2
    _resumed_from_the_latest_checkpoint(records)  # I3
    if baseline is not None:  # I4
        best = summary["best_trial"]
        assert best is not None, "no best trial"
        assert (best["trial_id"], best["metric"]) == (
            baseline.best_trial_id,
            baseline.best_metric,
        ), f"best trial {best['trial_id']} ({best['metric']}), fault-free: {baseline}"
    # I5: the log replays, verifies, and replaying twice equals replaying once.
    first = replay(records, verify=True)
    assert first.divergence is None, first.divergence
    assert replay(records).run.snapshot() == first.run.snapshot()
    # I6: every dead letter has a reason, and the process that moved it logged it.
    dead = dead_letters(cluster.namespace)
    logs = "".join(path.read_text(errors="replace") for path in cluster.logs.glob("*.log"))
    for letter in dead:
        assert letter.reason, f"dead letter {letter.message_id} has no reason"
        assert letter.message_id in logs, f"dead letter {letter.message_id} was never logged"
    # I7: ended within the stated bound.
    created = next(r for r in records if isinstance(r, CreatedRecord))
    seconds = max(r.at for r in records if isinstance(r, InputRecord)) - created.at
    assert seconds <= bound_s, f"the experiment took {seconds:.0f} s, over its {bound_s:.0f} s"
    _live_equals_replayed(cluster.namespace, experiment_id, Path(summary["event_log"]))  # I8
    return Report(
        summary=summary,
        records=records,
        seconds=seconds,
        attempts=attempts,
        restarts=sum(t["restarts"] for t in summary["trials"]),
        dead_letters=dead,
    )


def _accounted_for(summary: dict[str, Any], records: list[Record], expected: int | None) -> int:
    """I1; returns how many attempts were started in all."""
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert summary["state"] in ("COMPLETED", "CANCELED", "ERROR"), summary["state"]
    unfinished = {i: t["state"] for i, t in trials.items() if t["state"] not in FINAL_TRIAL_STATES}
    assert not unfinished, f"trials not in a final state: {unfinished}"
    if expected is not None:
        assert len(trials) == expected, f"{len(trials)} trials, {expected} planned"
    bodies = [c.body for r in records if isinstance(r, InputRecord) for c in r.commands]
    attempts = {(b.trial_id, b.attempt) for b in bodies if isinstance(b, RunTrial)}
    commanded = {trial_id for trial_id, _ in attempts}
    assert commanded == set(trials), f"run_trial sent for {commanded}, summary has {set(trials)}"
    return len(attempts)


def _no_duplicated_effect(records: list[Record]) -> None:
    """I2."""
    ids = [r.message_id for r in records if isinstance(r, InputRecord)]
    twice = {i for i in ids if ids.count(i) > 1}
    assert not twice, f"messages applied twice: {sorted(twice)}"
    lengths: dict[int, list[int]] = {}
    for _, body in _inputs(records, OpCompleted):
        lengths.setdefault(body.trial_id, []).append(body.length)
    for trial_id, seen in lengths.items():
        assert seen == sorted(set(seen)), f"trial {trial_id} results applied at lengths {seen}"
    uuids = [body.uuid for _, body in _inputs(records, CheckpointSaved)]
    assert len(uuids) == len(set(uuids)), "a checkpoint was reported twice"


def _resumed_from_the_latest_checkpoint(records: list[Record]) -> None:
    """I3: every attempt starts from the latest checkpoint saved before it was sent; a
    copy of another trial (population-based training), until it saves its own, from the
    checkpoint its ``Create`` names, which its source saved at the length it states."""
    saved: dict[int, dict[str, int]] = {}
    latest: dict[int, int] = {}
    anywhere: dict[str, tuple[int, int]] = {}  # uuid -> (trial, steps), every trial's
    origins: dict[str, Create] = {}
    for record in records:
        if not isinstance(record, InputRecord):
            continue
        body = record.input
        origins.update((op.request_id, op) for op in record.ops if isinstance(op, Create))
        if isinstance(body, CheckpointSaved) and record.ignored is None:
            saved.setdefault(body.trial_id, {})[body.uuid] = body.steps_completed
            latest[body.trial_id] = max(latest.get(body.trial_id, 0), body.steps_completed)
            anywhere[body.uuid] = (body.trial_id, body.steps_completed)
        for command in record.commands:
            run = command.body
            if not isinstance(run, RunTrial):
                continue
            where = f"trial {run.trial_id} attempt {run.attempt}"
            origin = origins.get(run.request_id)
            if run.trial_id not in latest and origin is not None and origin.clone is not None:
                clone = origin.clone
                assert run.latest_checkpoint == clone.checkpoint, (
                    f"{where}, a copy of trial {clone.source_trial}, does not start from "
                    f"its checkpoint {clone.checkpoint}"
                )
                assert anywhere.get(clone.checkpoint) == (clone.source_trial, clone.length), (
                    f"{where} copies checkpoint {clone.checkpoint}, which trial "
                    f"{clone.source_trial} did not save at length {clone.length}"
                )
                continue
            if run.latest_checkpoint is None:
                assert run.trial_id not in latest, (
                    f"{where} starts from zero, but step {latest[run.trial_id]} was saved"
                )
                continue
            steps = saved.get(run.trial_id, {}).get(run.latest_checkpoint)
            assert steps is not None, f"{where} resumes from an unknown checkpoint"
            assert steps == latest[run.trial_id], (
                f"{where} resumes from step {steps}, but step {latest[run.trial_id]} was saved"
            )


def _live_equals_replayed(namespace: str, experiment_id: str, path: Path) -> None:
    """I8: the live summary equals the summary of the replayed log, at one moment.

    Why this is not racy: the searcher applies an input and appends its record in one
    synchronous step (:meth:`ExperimentHost.apply`: no ``await`` between changing the
    state and writing the record, which reaches the file before the step returns), and
    it answers a describe in one step of the same event loop. So at the moment the
    describe is answered, the live state is the fold of exactly the records in the file
    then. The log only grows, so if its bytes are the same just before the request is
    sent and just after the answer arrives (and end with a whole record), they are the
    bytes it held when the answer was made: replaying those bytes must give the answer.
    If a record was appended in between, nothing can be concluded, and the check is made
    again (until ``QUIET_TIMEOUT_S``); once the window was quiet, any difference is a
    real one and fails at once. The experiment has ended, so records stop coming soon.
    """
    contexts = path.parent.parent.parent / "contexts"  # the searcher's state directory's
    outcome: list[str] = []

    def replayed(data: bytes, live: ExperimentSummary) -> ExperimentSummary:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "events.jsonl"
            copy.write_bytes(data)
            records = read_log(copy)
            run = replay(records, context_root=contexts if contexts.is_dir() else None).run
        created = next(r for r in records if isinstance(r, CreatedRecord))
        # The path and the create request's warnings are not state the log folds to, nor
        # is why trials wait (what the searcher last heard of the workers). The owner is
        # the one the log's created record names.
        summary = summarise(run, live.event_log, warnings=live.warnings)
        return summary.model_copy(update={"owner": created.owner, "waiting": live.waiting})

    async def check() -> None:
        async with Client(AMQP_URL, namespace=namespace) as client:
            experiment = client.experiment(experiment_id)

            async def quiet_and_compared() -> bool:
                before = path.read_bytes()
                live = await experiment.describe()
                if path.read_bytes() != before or not before.endswith(b"\n"):
                    return False  # a record came in meanwhile: look again
                expected = replayed(before, live)
                outcome.append(_difference(live, expected))
                return True

            await wait_for_async(
                quiet_and_compared,
                QUIET_TIMEOUT_S,
                f"the log of {experiment_id} to hold still across a describe",
            )

    asyncio.run(check())
    assert not outcome[-1], (
        f"I8: the live searcher's {experiment_id} differs from its replayed log:\n{outcome[-1]}"
    )


def _difference(live: ExperimentSummary, replayed: ExperimentSummary) -> str:
    """A diff of the two summaries (JSON, so that a NaN metric equals itself); empty when
    they are equal."""

    def text(summary: ExperimentSummary) -> list[str]:
        return json.dumps(summary.model_dump(mode="json"), indent=1).splitlines()

    return "\n".join(
        difflib.unified_diff(
            text(replayed), text(live), "replayed from the log", "live", lineterm=""
        )
    )
