"""The gangs' watch: what the workers hold for trials on several workers, against what
the searcher asks of them.

A gang's commands go to workers' control queues, which are exclusive: a queue dies with
its worker's connection, and a command in it with it. And the searcher forgets what it
no longer needs: a worker declared lost that comes back, or a searcher restarted, may
leave a worker holding slots for an attempt that has ended. Nothing else would ever
notice either; only one gang reserves at a time, so one such loss would stall every
gang. Each heartbeat says which attempts its worker holds slots for (``reserved``) and
runs (``running``); at each tick, the watch compares them with the runs:

* **Held for nothing**: a worker holds slots for an attempt the searcher serves and no
  longer asks it for (another attempt, the gang ended, not a part there). The worker is
  told to give them back (``kill_trial``, sent once, not logged: it changes no state).
* **Lost on the way**: a part that should be held (its ``reserve_slots`` sent) or running
  (its ``run_trial`` sent), and has not ended, is neither on its live worker for
  :data:`MISSING_BEATS` heartbeats and :data:`MISSING_S` seconds running. The part will
  never come: the attempt ends, as the part's preemption (a ``trial_exited`` the
  searcher writes to the log under a ``lost/...`` message id, like a worker found gone
  by an unroutable command), and the trial is placed again, without a restart counted.
  The margin covers a heartbeat sent before its worker handled the command, and an exit
  still on its way behind a backlog of events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rung.broker.schemas import ExitReason, KillTrial, TrialExited, WorkerHeartbeat
from rung.searcher.trials import ExperimentRun, TrialRuntime

__all__ = ["MISSING_BEATS", "MISSING_S", "GangWatch", "LostPart", "StaleHold"]

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


def _attempt(entry: str) -> tuple[str, int, int] | None:
    experiment_id, _, rest = entry.rpartition("/")
    experiment_id, _, trial = experiment_id.rpartition("/")
    if not (experiment_id and trial.isdecimal() and rest.isdecimal()):
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
        beats: Mapping[str, WorkerHeartbeat],
        counts: Mapping[str, int],
        now: float,
    ) -> tuple[list[StaleHold], list[LostPart]]:
        """What to tell the workers, and the parts lost, from the live workers' last
        heartbeats (``beats``) and how many each has sent (``counts``)."""
        return self._stale(runs, beats, now), self._lost(runs, beats, counts, now)

    def _stale(
        self, runs: Mapping[str, ExperimentRun], beats: Mapping[str, WorkerHeartbeat], now: float
    ) -> list[StaleHold]:
        stale = []
        for worker_id, beat in beats.items():
            for entry in beat.reserved or ():
                attempt = _attempt(entry)
                if attempt is None or attempt[0] not in runs:
                    continue  # not an experiment this searcher serves: not its business
                experiment_id, trial_id, number = attempt
                trial = runs[experiment_id].by_id.get(trial_id)
                if trial is not None and _asks(trial, number, worker_id):
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
        beats: Mapping[str, WorkerHeartbeat],
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
                    beat = beats.get(part.worker_id)
                    if beat is None or index in trial.gang_done:
                        continue  # a silent worker is the loss timer's; a part ended
                    key = (run.experiment_id, trial.trial_id, trial.attempt, part.worker_id)
                    if entry in (beat.reserved or ()) or entry in beat.running:
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


def _asks(trial: TrialRuntime, attempt: int, worker_id: str) -> bool:
    """Whether the run still asks ``worker_id`` to hold slots for the trial's ``attempt``."""
    return (
        trial.attempt == attempt
        and trial.gang is not None
        and trial.state in ("QUEUED", "RUNNING")
        and any(part.worker_id == worker_id for part in trial.gang)
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
