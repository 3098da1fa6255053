"""Who is alive: workers' heartbeats, and the timer that declares silent workers lost.

The clock is read here, in the shell. A worker that went silent while it ran trials of an
experiment reaches that experiment's pure core as a ``worker_lost`` input, logged like any
other, so replay needs no clock.

The registry is bounded. A worker silent for :meth:`WorkerRegistry.forget_after_s`
(ten times the loss timeout, and at least an hour) is forgotten: it has been shown as lost
all that while, and a worker that comes back is simply heard again. At most
:data:`MAX_WORKERS_TRACKED` workers are kept; past it the longest silent is dropped first
(never one that runs trials an experiment still counts on), so a flood of heartbeats under
made-up ids cannot grow the searcher's memory, and each worker's entry is cut to
:data:`MAX_WORKER_INFO_BYTES`, so the reply to ``list_workers`` stays within
:data:`~broker.limits.MAX_REPLY_BYTES`.

It also says why trials wait (:func:`waiting_reasons`): a trial needs a worker whose slots
hold its whole work bucket (``broker.topology.work_bucket``), and when no live worker has
that many, the experiment's summary says so.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from rung.broker.limits import MAX_REPLY_BYTES, MAX_WORKERS_TRACKED
from rung.broker.schemas import WorkerHeartbeat, WorkerInfo, WorkerLost
from rung.broker.schemas.events import PartState
from rung.broker.topology import work_bucket
from rung.searcher.service.gangs import place
from rung.searcher.service.gangwatch import parse_attempt
from rung.searcher.trials import ExperimentRun

__all__ = [
    "MAX_WORKERS_TRACKED",
    "MAX_WORKER_INFO_BYTES",
    "LostWorker",
    "WorkerRegistry",
    "waiting_reasons",
]

log = structlog.get_logger("rung.searcher")

# The most workers the registry keeps, and the most one worker's entry may take (as JSON):
# together the reply to list_workers stays within MAX_REPLY_BYTES.
MAX_WORKER_INFO_BYTES = MAX_REPLY_BYTES // MAX_WORKERS_TRACKED
# The most of one worker's parts of trials on several workers the registry keeps.
MAX_PARTS_BYTES = 4096
# A worker silent this long (at least; ten loss timeouts if that is longer) is forgotten.
FORGET_AFTER_MIN_S = 3600.0
# How many trial ids one waiting reason names before it says "and N more".
_NAMED_TRIALS = 10


@dataclass(frozen=True)
class LostWorker:
    """A ``worker_lost`` input to apply to one experiment, with its message id."""

    experiment_id: str
    body: WorkerLost
    message_id: str


class WorkerRegistry:
    def __init__(self, timeout_s: float, *, max_workers: int = MAX_WORKERS_TRACKED) -> None:
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.beats: dict[str, WorkerHeartbeat] = {}
        # How many heartbeats each worker has sent since it was first heard (a clock of
        # its own, which the gangs' watch counts in: searcher.service.gangwatch).
        self.beat_counts: dict[str, int] = {}
        # Each worker's parts of trials on several workers, as its last heartbeat showed
        # them, whole (the gangs' watch reads them; they are cut from the beats kept).
        self.parts: dict[str, dict[str, PartState]] = {}
        # When each worker was last heard from (monotonic clock): any message counts.
        # Longest silent first.
        self._last_heard: OrderedDict[str, float] = OrderedDict()
        # Workers that ran trials when the loss timer last looked: never dropped to make
        # room, or a flood of new ids could keep a dead worker from being declared lost.
        self._busy: set[str] = set()

    @property
    def forget_after_s(self) -> float:
        """How long a silent worker is remembered (and shown as lost)."""
        return max(10 * self.timeout_s, FORGET_AFTER_MIN_S)

    def heard(self, worker_id: str) -> None:
        now = time.monotonic()
        self._last_heard[worker_id] = now
        self._last_heard.move_to_end(worker_id)
        self._prune(now)

    def beat(self, heartbeat: WorkerHeartbeat) -> None:
        bounded = _bounded(heartbeat)
        if bounded is None:
            log.warning(
                "heartbeat ignored: its worker id alone is over the registry's bound",
                bytes=len(heartbeat.worker_id),
                limit=MAX_WORKER_INFO_BYTES,
            )
            return
        self.beats[heartbeat.worker_id] = bounded
        self.parts[heartbeat.worker_id] = _parts_kept(heartbeat)
        self.beat_counts[heartbeat.worker_id] = self.beat_counts.get(heartbeat.worker_id, 0) + 1
        self.heard(heartbeat.worker_id)

    def __len__(self) -> int:
        return len(self._last_heard)

    def _prune(self, now: float) -> None:
        """Forget the workers silent too long, then the longest silent past the cap."""
        forget = now - self.forget_after_s
        due: list[str] = []
        for worker_id, at in self._last_heard.items():
            if at > forget:
                break  # in order of last heard: the rest were heard later
            if worker_id not in self._busy:
                due.append(worker_id)
        for worker_id in due:
            self._drop(worker_id, "silent for too long")
        excess = len(self._last_heard) - self.max_workers
        victims: list[str] = []
        for worker_id in self._last_heard:
            if len(victims) >= excess:
                break
            if worker_id not in self._busy:
                victims.append(worker_id)
        for worker_id in victims:
            self._drop(worker_id, "too many workers tracked; the longest silent goes first")

    def _drop(self, worker_id: str, why: str) -> None:
        self._last_heard.pop(worker_id, None)
        self.beats.pop(worker_id, None)
        self.beat_counts.pop(worker_id, None)
        self.parts.pop(worker_id, None)
        log.debug("worker forgotten", worker_id=worker_id, why=why)

    def live(self) -> list[WorkerHeartbeat]:
        """The last heartbeat of each worker not silent past the loss timeout."""
        now = time.monotonic()
        return [
            beat
            for worker_id, beat in self.beats.items()
            if now - self._last_heard.get(worker_id, now) < self.timeout_s
        ]

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
        busy: set[str] = set()
        for run in runs:
            running: dict[str, list[str]] = {}
            for trial in run.trials.values():
                workers = set()
                if trial.state == "RUNNING" and trial.worker_id:
                    workers.add(trial.worker_id)
                if trial.gang is not None and trial.state in ("QUEUED", "RUNNING"):
                    workers.update(part.worker_id for part in trial.gang)  # its parts
                attempt = f"{trial.trial_id}.{trial.attempt}"
                for worker_id in workers:
                    running.setdefault(worker_id, []).append(attempt)
            busy.update(running)
            for worker_id, attempts in sorted(running.items()):
                # A worker not heard from since this searcher started gets a full window.
                if worker_id not in self._last_heard:
                    self._last_heard[worker_id] = now
                silent = now - self._last_heard[worker_id]
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
        self._busy = busy
        self._prune(now)
        return due

    def infos(self) -> list[WorkerInfo]:
        now = time.monotonic()
        self._prune(now)
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


def _parts_kept(beat: WorkerHeartbeat) -> dict[str, PartState]:
    """A heartbeat's parts as the registry keeps them: held and running ones first, then
    ended ones, within :data:`MAX_PARTS_BYTES` (a flood of made-up parts cannot grow the
    searcher's memory; a real worker shows a few)."""
    parts = list((beat.parts or {}).items())
    # Held and running ones first, then the ended ones newest first (the worker lists
    # them oldest first): those whose exits may still be on their way are kept.
    ordered = sorted(
        enumerate(parts),
        key=lambda item: (item[1][1] == "ended", -item[0] if item[1][1] == "ended" else item[0]),
    )
    ordered_parts = [part for _, part in ordered]
    kept: dict[str, PartState] = {}
    size = 0
    for entry, state in ordered_parts:
        if parse_attempt(entry) is None:
            continue  # not an attempt's name: nothing the gangs' watch could use
        size += len(entry) + len(state) + 8
        if size > MAX_PARTS_BYTES:
            break
        kept[entry] = state
    return kept


def _bounded(beat: WorkerHeartbeat) -> WorkerHeartbeat | None:
    """The heartbeat as the registry keeps it: its lists cut so that its entry takes at
    most :data:`MAX_WORKER_INFO_BYTES` (a last item says how many were cut), without its
    parts (kept whole apart); None when its worker id alone is over that."""
    beat = beat.model_copy(update={"parts": None})
    if len(beat.model_dump_json()) <= MAX_WORKER_INFO_BYTES:
        return beat
    if len(beat.worker_id.encode()) > MAX_WORKER_INFO_BYTES // 2:
        return None
    gpus, running = list(beat.gpus), list(beat.running)
    cut_gpus = cut_running = 0
    while True:
        shown = beat.model_copy(
            update={
                "gpus": gpus + ([f"... {cut_gpus} more"] if cut_gpus else []),
                "running": running + ([f"... {cut_running} more"] if cut_running else []),
            }
        )
        if len(shown.model_dump_json()) <= MAX_WORKER_INFO_BYTES or not (gpus or running):
            return shown
        if len(running) >= len(gpus):
            running.pop()
            cut_running += 1
        else:
            gpus.pop()
            cut_gpus += 1


def waiting_reasons(run: ExperimentRun, live: list[WorkerHeartbeat]) -> list[str]:
    """Why the experiment's queued trials wait although it is active: none of the live
    workers (``live``, from their heartbeats) has the slots their work bucket needs.
    Empty when nothing waits for that reason (a trial that merely waits its turn, for a
    busy worker that can fit it, is not listed)."""
    if run.state != "ACTIVE":
        return []
    queued = sorted(t.trial_id for t in run.trials.values() if t.state == "QUEUED")
    if not queued:
        return []
    need = max(run.experiment.config.resources.slots_per_trial, 1)
    bucket = work_bucket(need)
    largest = max((beat.slots for beat in live), default=0)
    if largest >= bucket or place(need, live) is not None:
        return []  # a worker can take them, or a gang of workers can (searcher.service.gangs)
    shown = ", ".join(str(t) for t in queued[:_NAMED_TRIALS])
    more = len(queued) - _NAMED_TRIALS
    trials = ("trial " if len(queued) == 1 else "trials ") + shown
    if more > 0:
        trials += f" and {more} more"
    verb = "needs" if len(queued) == 1 else "need"
    slots = f"{need} slot" + ("" if need == 1 else "s")
    if bucket != need:
        slots += f" (a worker of at least {bucket}, the size of its work bucket)"
    if not live:
        return [f"{trials} {verb} {slots}; no worker is live"]
    count = f"{len(live)} worker" + ("" if len(live) == 1 else "s")
    return [f"{trials} {verb} {slots}; the largest worker has {largest} ({count})"]
