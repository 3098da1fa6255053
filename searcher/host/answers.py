"""What the searcher last told each running trial attempt, to tell it again when asked.

Commands to a running trial (continue, pause, close, preempt, kill) go to its worker's
private queue, which RabbitMQ deletes with the worker's connection: a command published
just before a connection reset can be lost although the broker confirmed it. A trial
waiting for the answer to a completed operation therefore sends its ``op_completed``
again under the same message id; the searcher knows the duplicate and, instead of
dropping it silently, re-sends the command it answered with. The command keeps its own
message id, so a worker that has it already drops it.

This is bookkeeping of the shell (what each attempt is told, noted as it is decided:
a duplicate completion gets no answer again while any decision waits to be published),
not of the pure core: it is rebuilt after a restart from the log's records, newest
first.
"""

from __future__ import annotations

from dataclasses import dataclass

from rung.broker.schemas import ContinueTrial, DeleteCheckpoints, KillTrial, OpCompleted
from rung.searcher.eventlog.reader import LogRecords
from rung.searcher.eventlog.records import InputRecord
from rung.searcher.trials import Command, ExperimentRun

__all__ = ["Answer", "Answers"]

Attempt = tuple[int, int]  # trial id, attempt


@dataclass(frozen=True)
class Answer:
    """A command sent to one worker, with the record and index that name its message."""

    seq: int
    index: int
    command: Command

    @property
    def message_id(self) -> str:
        return f"{self.command.body.experiment_id}/{self.seq}/{self.index}"

    def answers(self, completion: OpCompleted) -> bool:
        """True if this command was sent after the operation ``completion`` ended: any
        command but the ``continue`` that started that operation (or an earlier one)."""
        body = self.command.body
        return not isinstance(body, ContinueTrial) or body.length > completion.length


class Answers:
    """The last command sent to each running trial attempt's worker."""

    def __init__(self) -> None:
        self._last: dict[str, dict[Attempt, Answer]] = {}  # by experiment

    def __len__(self) -> int:
        return sum(len(answers) for answers in self._last.values())

    def note(self, seq: int, index: int, command: Command) -> None:
        """Remember a command to a worker (work-queue commands are never lost)."""
        body = command.body
        if command.worker_id is None or isinstance(body, DeleteCheckpoints):
            return  # (a deletion is about the experiment's storage, not an attempt)
        answers = self._last.setdefault(body.experiment_id, {})
        answers[(body.trial_id, body.attempt)] = Answer(seq, index, command)

    def to_repeat(self, run: ExperimentRun, completion: OpCompleted) -> Answer | None:
        """The command to send again for a re-sent ``completion``, if there is one: the
        attempt is the trial's current one, and the worker that asks was answered after
        that completion (a killed trial's attempt too: its kill may be what was lost)."""
        trial = run.by_id.get(completion.trial_id)
        if trial is None or trial.attempt != completion.attempt:
            return None
        answers = self._last.get(completion.experiment_id, {})
        answer = answers.get((completion.trial_id, completion.attempt))
        if answer is None or answer.command.worker_id != completion.worker_id:
            return None
        return answer if answer.answers(completion) else None

    def ended(self, experiment_id: str, trial_id: int, attempt: int) -> None:
        """The attempt's process has exited: nothing waits for an answer any more."""
        self._last.get(experiment_id, {}).pop((trial_id, attempt), None)

    def prune(self, run: ExperimentRun) -> None:
        """Forget the attempts of ``run`` that another attempt replaced, and those that
        stopped running without a kill (a killed one is kept until it exits)."""
        answers = self._last.get(run.experiment_id, {})
        for (trial_id, attempt), answer in list(answers.items()):
            trial = run.by_id.get(trial_id)
            if (
                trial is None
                or trial.attempt != attempt
                or (trial.state != "RUNNING" and not isinstance(answer.command.body, KillTrial))
            ):
                del answers[(trial_id, attempt)]

    def forget(self, experiment_id: str) -> None:
        self._last.pop(experiment_id, None)

    def recover(self, run: ExperimentRun, records: LogRecords) -> None:
        """Rebuild the last command of each running attempt of ``run`` from its log,
        reading input records from the newest back until every one is found."""
        # Running attempts, and those killed by a failure whose process has not exited.
        wanted = {
            (t.trial_id, t.attempt)
            for t in run.trials.values()
            if t.state == "RUNNING" or t.worker_id is not None
        }
        for i in range(len(records) - 1, -1, -1):
            if not wanted:
                return
            if records.kind(i) != "input":
                continue
            record = records[i]
            assert isinstance(record, InputRecord)  # noqa: S101 (the kind says so)
            for index in range(len(record.commands) - 1, -1, -1):
                logged = record.commands[index]
                body = logged.body
                if logged.worker_id is None or isinstance(body, DeleteCheckpoints):
                    continue  # work-queue commands name no worker to answer
                key = (body.trial_id, body.attempt)
                if key in wanted:
                    wanted.discard(key)
                    self.note(record.seq, index, Command(body, logged.worker_id))
