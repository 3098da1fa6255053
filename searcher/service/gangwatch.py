"""The gangs' watch: what the workers hold for trials on several workers, against what
the searcher asks of them.

A gang's commands go to workers' control queues, which are exclusive: a queue dies with
its worker's connection, and a command in it with it. And the searcher forgets what it
no longer needs: a worker declared lost that comes back, or a searcher restarted, may
leave a worker holding slots for an attempt that has ended. Nothing else would ever
notice either; only one gang reserves at a time, so one such loss would stall every
gang. Each heartbeat says which parts its worker holds slots for, runs, or ended lately
(``parts``: held, running, ended, by attempt); at each tick, the watch compares them
with the runs:

* **Held for nothing**: a worker holds slots for (or runs a part of) an older attempt of
  a trial than its current one, or the current one that no longer asks it for them (its
  gang ended, not a part there), or one of an experiment that could not be recovered.
  It is told to give them back (``kill_trial``, sent again after a while if it still
  shows them; not logged: it changes no state). An attempt newer than the run knows
  (another searcher took the experiment over) is never touched.
* **Lost on the way**: a part that should be held (its ``reserve_slots`` sent) or running
  (its ``run_trial`` sent) shows on its live worker neither as held, running nor ended
  for :data:`MISSING_BEATS` heartbeats and :data:`MISSING_S` seconds running. The part
  will never come: the attempt ends, as the part's preemption (a ``trial_exited`` the
  searcher writes to the log under a ``lost/...`` message id, like a worker found gone
  by an unroutable command), and the trial is placed again, without a restart counted.
  The margin covers a heartbeat sent before its worker handled the command; a part that
  ended shows as ended while its exit may still be on its way (a backlog of events, a
  searcher restarted), so its exit is never overtaken.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from rung.broker.schemas import ExitReason, KillTrial, TrialExited
from rung.broker.schemas.events import PartState
from rung.searcher.trials import ExperimentRun, TrialRuntime

__all__ = ["MISSING_BEATS", "MISSING_S", "GangWatch", "LostPart", "StaleHold", "parse_attempt"]

# How many heartbeats, and seconds at least, a part may be missing from its worker's.
MISSING_BEATS = 4
MISSING_S = 10.0
# At most this many (worker, attempt) pairs are remembered: bounded against a flood.
_REMEMBERED = 10_000


@dataclass(frozen=True)
class StaleHold:
    """Slots a worker holds for an attempt the searcher no longer asks it for."""

    worker_id: str
    body: KillTrial
    message_id: str


@dataclass(frozen=True)
class LostPart:
    """A part that will never come: its attempt's end, to apply to its experiment."""

    experiment_id: str
    body: TrialExited
    message_id: str


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_attempt(entry: str) -> tuple[str, int, int] | None:
    """``<experiment>/<trial>/<attempt>`` as its parts, or None if it is not one."""
    experiment_id, _, rest = entry.rpartition("/")
    experiment_id, _, trial = experiment_id.rpartition("/")
    if not (experiment_id and _number(trial) and _number(rest)):
        return None
    if len(trial) > 9 or len(rest) > 9:
        return None
    return experiment_id, int(trial), int(rest)


class GangWatch:
    def __init__(self) -> None:
        # (experiment, trial, attempt, worker) -> (heartbeat count, time) when first missed.
        self._missing: dict[tuple[str, int, int, str], tuple[int, float]] = {}
        # Stale holds already told to let go (told once; a lost kill is told again later).
        self._told: dict[tuple[str, str, int, int], float] = {}

    def check(
        self,
        runs: Mapping[str, ExperimentRun],
        parts: Mapping[str, Mapping[str, PartState]],
        counts: Mapping[str, int],
        now: float,
        *,
        broken: Collection[str] = (),
    ) -> tuple[list[StaleHold], list[LostPart]]:
        """What to tell the workers, and the parts lost, from the parts the live workers'
        last heartbeats showed (``parts``, by worker), how many heartbeats each has sent
        (``counts``), and the experiments that could not be recovered (``broken``)."""
        return self._stale(runs, parts, now, broken), self._lost(runs, parts, counts, now)

    def _stale(
        self,
        runs: Mapping[str, ExperimentRun],
        parts: Mapping[str, Mapping[str, PartState]],
        now: float,
        broken: Collection[str],
    ) -> list[StaleHold]:
        stale = []
        for worker_id, shown in parts.items():
            for entry, state in shown.items():
                attempt = parse_attempt(entry) if state != "ended" else None
                if attempt is None:
                    continue
                experiment_id, trial_id, number = attempt
                if experiment_id not in broken and not _stale_attempt(
                    runs, experiment_id, trial_id, number, worker_id
                ):
                    continue
                key = (worker_id, experiment_id, trial_id, number)
                if now - self._told.get(key, -1e18) < MISSING_S:
                    continue  # told just now: its next heartbeats may not show it yet
                self._told[key] = now
                body = KillTrial(experiment_id=experiment_id, trial_id=trial_id, attempt=number)
                message_id = (
                    f"{experiment_id}/gang/release/{trial_id}/{number}/{worker_id}/{now:.0f}"
                )
                stale.append(StaleHold(worker_id, body, message_id))
        while len(self._told) > _REMEMBERED:
            del self._told[next(iter(self._told))]
        return stale

    def _lost(
        self,
        runs: Mapping[str, ExperimentRun],
        parts: Mapping[str, Mapping[str, PartState]],
        counts: Mapping[str, int],
        now: float,
    ) -> list[LostPart]:
        lost = []
        watched = set()
        for run in runs.values():
            for trial in run.trials.values():
                if trial.gang is None or trial.state not in ("QUEUED", "RUNNING"):
                    continue
                entry = f"{run.experiment_id}/{trial.trial_id}/{trial.attempt}"
                for index, part in enumerate(trial.gang):
                    shown = parts.get(part.worker_id)
                    if shown is None or index in trial.gang_done:
                        continue  # a silent worker is the loss timer's; a part ended
                    key = (run.experiment_id, trial.trial_id, trial.attempt, part.worker_id)
                    if entry in shown:  # held, running, or ended: its exit is on its way
                        self._missing.pop(key, None)
                        continue
                    watched.add(key)
                    first = self._missing.setdefault(key, (counts.get(part.worker_id, 0), now))
                    beats_since = counts.get(part.worker_id, 0) - first[0]
                    if beats_since < MISSING_BEATS or now - first[1] < MISSING_S:
                        continue
                    lost.append(_lost_part(run, trial, index, part.worker_id, beats_since))
        for key in [k for k in self._missing if k not in watched]:
            del self._missing[key]
        return lost


def _stale_attempt(
    runs: Mapping[str, ExperimentRun], experiment_id: str, trial_id: int, attempt: int, worker: str
) -> bool:
    """Whether the run no longer asks ``worker`` for its part of the trial's ``attempt``:
    an older attempt, or the current one whose gang ended or has no part there. Not an
    experiment or a trial the run knows, nor a newer attempt (another searcher may own the
    experiment now): not this searcher's to end."""
    run = runs.get(experiment_id)
    trial = run.by_id.get(trial_id) if run is not None else None
    if trial is None or attempt > trial.attempt:
        return False
    if attempt < trial.attempt:
        return True
    return not (
        trial.gang is not None
        and trial.state in ("QUEUED", "RUNNING")
        and any(part.worker_id == worker for part in trial.gang)
    )


def _lost_part(
    run: ExperimentRun, trial: TrialRuntime, part: int, worker_id: str, beats: int
) -> LostPart:
    what = "run_trial" if len(trial.gang_reserved) == len(trial.gang or ()) else "reserve_slots"
    body = TrialExited(
        experiment_id=run.experiment_id,
        trial_id=trial.trial_id,
        attempt=trial.attempt,
        worker_id=worker_id,
        reason=ExitReason.PREEMPTED,
        message=(
            f"worker {worker_id} neither holds nor runs part {part} after {beats} heartbeats: "
            f"its {what} was lost (its worker's connection dropped, or it restarted)"
        ),
    )
    message_id = f"lost/{trial.trial_id}/{trial.attempt}/{worker_id}"
    return LostPart(run.experiment_id, body, message_id)
