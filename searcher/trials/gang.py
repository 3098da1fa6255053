"""The rules of a trial that runs on several workers at once (gang scheduling).

The searcher's placement arrives as an input (``gang_planned``, logged): the trial's
queued attempt is replaced by a new one, whose parts are the planned workers, the chief's
first. Each worker is told to hold its part's slots (``reserve_slots``) and answers
``slots_reserved`` once it does; when every part holds its slots, each gets the attempt's
``run_trial`` with its place in the gang. The attempt is RUNNING once the chief's part has
started (its ranks wait for the others' in their first collective).

All or none: any part that ends badly ends the attempt, and every other part is killed or
gives its slots back (:meth:`RunBase._end_gang`). A part that fails counts once against
``max_restarts``, as the trial's failure; a part lost with its worker, or given back, is a
preemption: the trial resumes from its latest checkpoint without a restart counted. Only
the chief's part reports; the other parts' events other than their start and exit are
ignored.
"""

from __future__ import annotations

from rung.broker.schemas import (
    ExitReason,
    GangPlacement,
    GangPlanned,
    ReserveSlots,
    SlotsReserved,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.trials.base import RunBase
from rung.searcher.trials.model import Command, Step, TrialRuntime

__all__ = ["GangRun"]

# A member part's exits that say nothing about the attempt: its ranks ended cleanly (after
# the chief's, or as it did); the chief's exit ends the attempt.
_CLEAN = (ExitReason.COMPLETED, ExitReason.OUT_OF_OPS, ExitReason.USER_REQUESTED_STOP)


class GangRun(RunBase):
    """What a gang's inputs do to an experiment's run."""

    def on_gang_planned(self, body: GangPlanned) -> Step:
        step = Step()
        trial = self.by_id.get(body.trial_id)
        need = max(self.experiment.config.resources.slots_per_trial, 1)
        planned = sum(part.slots for part in body.parts)
        if trial is None:
            step.ignored = f"gang_planned: the experiment has no trial {body.trial_id}"
        elif trial.state != "QUEUED" or trial.attempt != body.attempt or trial.gang:
            step.ignored = (
                f"gang_planned: trial {trial.trial_id} is {trial.state} at attempt "
                f"{trial.attempt}{' with a gang' if trial.gang else ''}, not queued at "
                f"attempt {body.attempt} without one"
            )
        elif self.state != "ACTIVE":
            step.ignored = f"gang_planned: the experiment is {self.state}"
        elif planned != need:
            step.ignored = f"gang_planned: the parts hold {planned} slots, the trial needs {need}"
        if step.ignored is not None or trial is None:
            return step
        # A new attempt: the one queued on the work queues is stale from now on (a worker
        # that takes it later is told to stop).
        trial.attempt += 1
        trial.gang = list(body.parts)
        trial.gang_reserved = []
        trial.gang_ports = None
        trial.gang_done = []
        where = ", ".join(f"{part.worker_id} ({part.slots})" for part in body.parts)
        trial.logs.append(f"[rung] attempt {trial.attempt} placed on {where}; reserving slots")
        for index, part in enumerate(body.parts):
            reserve = ReserveSlots(
                experiment_id=self.experiment_id,
                trial_id=trial.trial_id,
                attempt=trial.attempt,
                part=index,
                slots=part.slots,
            )
            step.commands.append(Command(reserve, part.worker_id))
        return step

    # ------------------------------------------------------------------ parts' events
    @staticmethod
    def part_of(trial: TrialRuntime, worker_id: str | None) -> int | None:
        """The part of the trial's attempt that ``worker_id`` runs, or None."""
        for index, part in enumerate(trial.gang or ()):
            if part.worker_id == worker_id:
                return index
        return None

    def _gang_fenced(self, trial: TrialRuntime, body: Body, part: int, step: Step) -> bool | None:
        """Whether an event from part ``part``'s worker must not touch the trial; None
        leaves the chief's other events to the rules of a trial on one worker."""
        if isinstance(body, SlotsReserved):
            if trial.state == "QUEUED" and body.part == part:
                return False
            step.ignored = (
                f"trial {trial.trial_id} is {trial.state}: slots_reserved of part "
                f"{body.part} from {body.worker_id} (its part {part}) is ignored"
            )
            return True
        if isinstance(body, TrialStarted | TrialExited) and trial.state in ("QUEUED", "RUNNING"):
            return False
        if part == 0:
            return None
        worker = getattr(body, "worker_id", "?")
        step.ignored = (
            f"trial {trial.trial_id}: a {body.type} from part {part} ({worker}) is ignored; "
            "only the chief's part (0) reports"
        )
        return True

    def _gang_event(self, trial: TrialRuntime, body: Body, part: int, step: Step) -> bool:
        """Handle an event of part ``part`` that is a gang's own (a reservation, a part's
        start or exit); False leaves it to the rules of a trial on one worker."""
        match body:
            case SlotsReserved():
                self._slots_reserved(trial, body, step)
            case TrialStarted():
                self._gang_started(trial, body, part, step)
            case TrialExited():
                if self._member_exited(trial, body, part, step):
                    self._exited(trial, body, step)
            case _:
                return False
        return True

    def _exited(self, trial: TrialRuntime, body: TrialExited, step: Step) -> None:
        raise NotImplementedError  # the trial's exit: ExperimentRun's rules

    def _slots_reserved(self, trial: TrialRuntime, body: SlotsReserved, step: Step) -> None:
        gang = trial.gang
        assert gang is not None  # noqa: S101 (fenced: only a part's worker gets here)
        if body.part in trial.gang_reserved:
            step.ignored = f"trial {trial.trial_id}: part {body.part} holds its slots already"
            return
        trial.gang_reserved.append(body.part)
        if body.part == 0 and body.pub_port is not None and body.master_port is not None:
            trial.gang_ports = {"pub_port": body.pub_port, "master_port": body.master_port}
        if len(trial.gang_reserved) < len(gang) or trial.gang_ports is None:
            return
        trial.logs.append(f"[rung] every part of attempt {trial.attempt} holds its slots; starting")
        run = self._run_trial(trial)
        for index, part in enumerate(gang):
            placement = GangPlacement(
                rank=index,
                addrs=[p.address for p in gang],
                slot_counts=[p.slots for p in gang],
                **trial.gang_ports,
            )
            step.commands.append(
                Command(run.model_copy(update={"gang": placement}), part.worker_id)
            )

    def _gang_started(self, trial: TrialRuntime, body: TrialStarted, part: int, step: Step) -> None:
        """A part's process started: the chief's makes the attempt RUNNING."""
        if trial.state == "QUEUED" and part == 0:
            trial.state = "RUNNING"
            trial.worker_id = body.worker_id
        elif trial.state == "QUEUED" and len(trial.gang_reserved) < len(trial.gang or ()):
            step.ignored = (
                f"trial {trial.trial_id}: part {part} started before every part held its slots"
            )

    def _member_exited(self, trial: TrialRuntime, body: TrialExited, part: int, step: Step) -> bool:
        """A part's exit; True when it ends the attempt (the caller then ends it as the
        trial's exit), False when it changes nothing."""
        if part != 0 and trial.state == "RUNNING" and body.reason in _CLEAN:
            if part not in trial.gang_done:
                trial.gang_done.append(part)
            return False  # (the chief's exit ends the attempt)
        if part != 0 or trial.state == "QUEUED":
            trial.logs.append(
                f"[rung] part {part} of attempt {trial.attempt} (worker {body.worker_id}) "
                f"ended it: {body.reason.value} {body.message}".rstrip()
            )
        return True
