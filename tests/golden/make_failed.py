"""How ``failed.v1.jsonl`` was made: a failed experiment, written by the real host.

    .venv/bin/python tests/golden/make_failed.py OUT.jsonl

The experiment is ``golden-failed.yaml``: a custom search method,
``contexts/<hash>/breaks_on_purpose.py``, that raises when a validation metric is above
100. Two workers run the tutorial script (``examples/core_api/3_hpsearch.py``, whose
metric is ``increment_by`` times the length trained). The workers' events are scripted
here, in a fixed order with fixed message ids, checkpoint ids and times, and applied by
:class:`rung.searcher.host.ExperimentHost`, which writes the log as the searcher does:

* trial 2 (``increment_by`` 5) completes at 100, and trial 3 starts in its place;
* trial 1 (``increment_by`` 7) reports 140: the method raises, and the input's record
  has ``failed`` set, with the kills of trials 1 and 3 and a shutdown with
  ``failure: true``; the experiment is in ERROR, trials 1 and 3 are CANCELED;
* the user kills the experiment: the kills are sent again;
* both killed processes report their exit.

The output is the same bytes every time with the Rung it was made with. The golden log
is what that Rung wrote: never regenerate it to make a test pass (see README.md).
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from rung.broker.schemas import (
    CheckpointSaved,
    ControlExperiment,
    ExitReason,
    MetricsReported,
    OpCompleted,
    ProgressReported,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.searcher.config import load_config_file
from rung.searcher.eventlog import CreatedRecord, InputRecord, read_log, replay
from rung.searcher.experiment import Experiment
from rung.searcher.host import ExperimentHost
from rung.searcher.host.host import experiment_id_for
from rung.searcher.methods import build_method
from rung.searcher.trials import ExperimentRun

GOLDEN = Path(__file__).resolve().parent
CONTEXTS = GOLDEN / "contexts"
MODULE = "breaks_on_purpose.py"
KEY = "golden-failed"
T0 = 1796000000.0  # the times are for people only; no decision reads them
# What a worker reports for a process it killed on the searcher's order.
KILLED = (
    "the training process was killed: the searcher asked (the experiment was killed, "
    "or the attempt is stale)"
)


def context_hash() -> str:
    """The hash the log names: the one context directory, named after its module's
    SHA-256 (checked, so that the module cannot change under the log)."""
    (module,) = CONTEXTS.glob(f"*/{MODULE}")
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    if module.parent.name != digest:
        raise SystemExit(f"{module} was edited: its SHA-256 is {digest}")
    return digest


class Script:
    """The experiment's host, fed one scripted input at a time."""

    def __init__(self, out: Path) -> None:
        config = load_config_file(GOLDEN / "golden-failed.yaml").config
        digest = context_hash()
        self.experiment_id = experiment_id_for(KEY)
        run = ExperimentRun(
            self.experiment_id,
            Experiment(config, build_method(config, context_dir=CONTEXTS / digest)),
            context_hash=digest,
            checkpoint_root="/tmp/golden-state/checkpoints",  # noqa: S108 (a recorded path)
        )
        created = CreatedRecord(
            seq=1,
            at=T0,
            experiment_id=self.experiment_id,
            config=config.model_dump(mode="json", by_alias=True),
            context_hash=digest,
            checkpoint_root=run.checkpoint_root,
            request_key=KEY,
        )
        self.clock = 0
        self.sent: dict[str, int] = {}
        self.host = ExperimentHost.create(
            run, created, out, owner="golden-host/1", context_root=CONTEXTS, warnings=[], at=T0
        )

    def at(self) -> float:
        self.clock += 1
        return T0 + self.clock / 50

    def apply(self, message_id: str, body: Body) -> None:
        self.host.apply(body, message_id, at=self.at())

    def worker(self, worker: str, trial: int, kind: Callable[..., Body], **fields: object) -> None:
        """An event of ``worker``'s, with the ids a worker gives: worker/session/count."""
        self.sent[worker] = self.sent.get(worker, 0) + 1
        session = hashlib.sha256(worker.encode()).hexdigest()[:12]
        ids = {"experiment_id": self.experiment_id, "trial_id": trial, "attempt": 1}
        self.apply(
            f"{worker}/{session}/{self.sent[worker]}", kind(**ids, worker_id=worker, **fields)
        )

    def x(self, trial: int, steps: int) -> int:
        """The tutorial script's metric: ``increment_by`` times the batches trained."""
        run = self.host.run
        hparams = run.experiment.trials[run.by_id[trial].request_id].hparams
        return int(str(hparams["increment_by"])) * steps

    def train(self, worker: str, trial: int, steps: int) -> None:
        """The tutorial script's report after ``steps`` batches: metric, progress, save."""
        x = self.x(trial, steps)
        self.worker(
            worker,
            trial,
            MetricsReported,
            group="training",
            steps_completed=steps,
            metrics={"x": x},
        )
        self.worker(worker, trial, ProgressReported, units=float(steps))
        name = uuid.uuid5(uuid.NAMESPACE_URL, f"rung-golden/{KEY}/{trial}/{steps}")
        self.worker(
            worker,
            trial,
            CheckpointSaved,
            uuid=str(name),
            steps_completed=steps,
            metadata={"steps_completed": steps},
            size_bytes=30,
        )

    def validate(self, worker: str, trial: int, length: int) -> None:
        x = self.x(trial, length)
        self.worker(
            worker,
            trial,
            MetricsReported,
            group="validation",
            steps_completed=length,
            metrics={"x": x},
        )
        self.worker(worker, trial, OpCompleted, length=length, metric=float(x))

    def killed(self, worker: str, trial: int) -> None:
        self.worker(
            worker, trial, TrialExited, reason=ExitReason.ERRORED, exit_code=-9, message=KILLED
        )


def make(out: Path) -> None:
    script = Script(out)  # the start: trials 1 (increment_by 7) and 2 (increment_by 5)
    script.worker("local-1", 1, TrialStarted, slots=1)
    script.worker("local-2", 2, TrialStarted, slots=1)
    script.train("local-1", 1, 10)
    script.train("local-2", 2, 10)
    script.train("local-2", 2, 20)
    script.validate("local-2", 2, 20)  # 100: not above 100; trial 2 is closed
    script.worker(
        "local-2",
        2,
        TrialExited,
        reason=ExitReason.COMPLETED,
        exit_code=0,
        message="the trial is done",
    )
    script.worker("local-2", 3, TrialStarted, slots=1)  # trial 3 took trial 2's place
    script.train("local-1", 1, 20)
    script.train("local-2", 3, 10)
    script.validate("local-1", 1, 20)  # 140: the method raises, the experiment fails
    script.apply(
        "control/4d1f6f0a9c2e4b7d8e5a3c6b1f0e9d2a",
        ControlExperiment(experiment_id=script.experiment_id, action="kill"),
    )
    script.killed("local-1", 1)
    script.killed("local-2", 3)
    script.host.close()
    check(out)


def check(out: Path) -> None:
    """The log holds the story it should, and replays and verifies."""
    records = read_log(out)
    failed = [r for r in records if isinstance(r, InputRecord) and r.failed is not None]
    assert len(failed) == 1, failed
    assert failed[0].failed == "ValueError: metric 140.0 is above 100.0", failed[0].failed
    kills = sorted(c.body.trial_id for c in failed[0].commands if c.body.type == "kill_trial")
    assert kills == [1, 3], kills
    assert [op.model_dump() for op in failed[0].ops] == [
        {"type": "shutdown", "cancel": False, "failure": True}
    ]
    result = replay(records, context_root=CONTEXTS, verify=True)
    assert result.divergence is None, result.divergence.diff()
    run = result.run
    assert run.state == "ERROR", run.state
    states = {t.trial_id: t.state for t in run.trials.values()}
    assert states == {1: "CANCELED", 2: "COMPLETED", 3: "CANCELED"}, states
    assert all(t.worker_id is None for t in run.trials.values())


if __name__ == "__main__":
    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        raise SystemExit("usage: make_failed.py OUT.jsonl (a file that does not exist yet)")
    with structlog.testing.capture_logs():  # the host logs the failure, with its traceback
        make(Path(sys.argv[1]))
