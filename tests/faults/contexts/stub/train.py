"""A deterministic training stub for fault tests, which misbehaves on command.

Its loss is a pure function of the hyperparameter ``x`` and the length trained, so a run
with faults must end with the same best trial as a run without. It checkpoints its step
every ``checkpoint_every`` steps and resumes from the latest checkpoint.

Commands come from files in ``$RUNG_FAULT_DIR`` (set in the worker's environment), named
after the trial: ``trial-<id>.json`` holds ``{"at": STEP, "do": ACTION}``. The file is
consumed (renamed) when the action fires, so each command fires once:

* ``crash``: exit with code 3, as a script error;
* ``hang``: block forever, making no Core API call;
* ``exit0``: exit 0 in the middle of an operation, without reporting it;
* ``nan``: report NaN as the metric of the operation that contains STEP.
"""

import json
import math
import os
import pathlib
import threading
import time

import rung as det

TARGET = 0.3


def loss(x: float, length: int) -> float:
    return (x - TARGET) ** 2 + 1.0 / length


def command(trial_id: int, step: int) -> str | None:
    directory = os.environ.get("RUNG_FAULT_DIR")
    if not directory:
        return None
    path = pathlib.Path(directory) / f"trial-{trial_id}.json"
    try:
        order = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if step < int(order["at"]):
        return None
    try:
        path.rename(path.with_suffix(".fired"))  # once only
    except FileNotFoundError:
        return None
    print(f"fault stub: trial {trial_id} does {order['do']!r} at step {step}", flush=True)  # noqa: T201
    return str(order["do"])


def main() -> None:
    info = det.get_cluster_info()
    if info is None or info.trial is None:
        raise SystemExit("run me on a Rung worker: I am a fault-test stub")
    trial_id = info.trial.trial_id
    hparams = info.trial.hparams
    x, step_sleep = float(hparams["x"]), float(hparams["step_sleep"])
    every = int(hparams["checkpoint_every"])
    with det.core.init() as core_context:
        step = 0
        if info.latest_checkpoint is not None:
            with core_context.checkpoint.restore_path(info.latest_checkpoint) as path:
                step = int((path / "step").read_text())
        report_nan = False
        for op in core_context.searcher.operations():
            while step < op.length:
                step += 1
                time.sleep(step_sleep)
                match command(trial_id, step):
                    case "crash":
                        os._exit(3)
                    case "hang":
                        threading.Event().wait()
                    case "exit0":
                        os._exit(0)
                    case "nan":
                        report_nan = True
                if step % every == 0:
                    op.report_progress(step)
                    with core_context.checkpoint.store_path({"steps_completed": step}) as (
                        path,
                        _,
                    ):
                        (path / "step").write_text(str(step))
                    if core_context.preempt.should_preempt():
                        return
            metric = math.nan if report_nan else loss(x, step)
            report_nan = False
            core_context.train.report_validation_metrics(step, {"loss": metric})
            op.report_completed(metric)


if __name__ == "__main__":
    main()
