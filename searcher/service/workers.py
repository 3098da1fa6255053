"""Who is alive: workers' heartbeats, and the timer that declares silent workers lost.

The clock is read here, in the shell. A worker that went silent while it ran trials of an
experiment reaches that experiment's pure core as a ``worker_lost`` input, logged like any
other, so replay needs no clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from rung.broker.schemas import WorkerHeartbeat, WorkerInfo, WorkerLost
from rung.searcher.trials import ExperimentRun

__all__ = ["LostWorker", "WorkerRegistry"]

log = structlog.get_logger("rung.searcher")


@dataclass(frozen=True)
class LostWorker:
    """A ``worker_lost`` input to apply to one experiment, with its message id."""

    experiment_id: str
    body: WorkerLost
    message_id: str


class WorkerRegistry:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.beats: dict[str, WorkerHeartbeat] = {}
        # When each worker was last heard from (monotonic clock): any message counts.
        self._last_heard: dict[str, float] = {}

    def heard(self, worker_id: str) -> None:
        self._last_heard[worker_id] = time.monotonic()

    def beat(self, heartbeat: WorkerHeartbeat) -> None:
        self.beats[heartbeat.worker_id] = heartbeat
        self.heard(heartbeat.worker_id)

    def forgive_own_stall(self, late_s: float) -> None:
        """After a stall of the searcher itself (frozen, suspended, starved), give every
        worker a new window: their heartbeats waited in the queue, unheard, and silence
        that the searcher caused must not count against them."""
        if late_s < self.timeout_s / 2:
            return
        log.warning(
            "the searcher itself was stalled; every worker gets a new window before it "
            "can be declared lost",
            stalled_s=round(late_s, 1),
            timeout_s=self.timeout_s,
        )
        now = time.monotonic()
        for worker_id in self._last_heard:
            self._last_heard[worker_id] = now

    def lost(self, runs: Iterable[ExperimentRun]) -> list[LostWorker]:
        """The ``worker_lost`` inputs due now: one per experiment and silent worker that
        runs trials of it. The message id names the attempts, so the same loss is applied
        once, and a later loss of the same worker (other attempts) is a new input."""
        now = time.monotonic()
        due = []
        for run in runs:
            running: dict[str, list[str]] = {}
            for trial in run.trials.values():
                if trial.state == "RUNNING" and trial.worker_id:
                    attempt = f"{trial.trial_id}.{trial.attempt}"
                    running.setdefault(trial.worker_id, []).append(attempt)
            for worker_id, attempts in sorted(running.items()):
                # A worker not heard from since this searcher started gets a full window.
                silent = now - self._last_heard.setdefault(worker_id, now)
                if silent < self.timeout_s:
                    continue
                log.warning(
                    "worker lost: nothing from it in time; its trials resume elsewhere",
                    experiment_id=run.experiment_id,
                    worker_id=worker_id,
                    silent_s=round(silent, 1),
                    timeout_s=self.timeout_s,
                )
                eid = run.experiment_id
                body = WorkerLost(experiment_id=eid, worker_id=worker_id, silent_s=round(silent, 1))
                message_id = f"{eid}/timer/worker-lost/{worker_id}/{','.join(attempts)}"
                due.append(LostWorker(eid, body, message_id))
        return due

    def infos(self) -> list[WorkerInfo]:
        now = time.monotonic()
        infos = []
        for worker_id, beat in sorted(self.beats.items()):
            silent = now - self._last_heard.get(worker_id, now)
            infos.append(
                WorkerInfo(
                    worker_id=worker_id,
                    slots=beat.slots,
                    free_slots=beat.free_slots,
                    gpus=list(beat.gpus),
                    running=list(beat.running),
                    last_seen_s=round(silent, 1),
                    lost=silent >= self.timeout_s,
                )
            )
        return infos
