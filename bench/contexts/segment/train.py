"""The sleep workload (bench/contexts/sleep), timed from inside: each phase of the
process's life is stamped with the wall clock and written, as JSON, to
``segment-<pid>.json`` in the directory its ``stamps`` hyperparameter names (its run
directory is removed once it has ended), where ``bench.segment`` reads it after the
experiment."""

import time

T = {"exec": time.time()}

import json  # noqa: E402 (the stamp comes first: the fork server imported few of these)
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402

import rung as det  # noqa: E402

STEP_S = 0.02

info = det.get_cluster_info()
if info is None or info.trial is None:
    raise SystemExit("run me on a Rung worker")
x, y = float(info.trial.hparams["x"]), float(info.trial.hparams["y"])
final = (x - 0.3) ** 2 + (y - 0.6) ** 2
ops = []
with det.core.init() as core_context:
    T["init"] = time.time()
    step = 0
    if info.latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(info.latest_checkpoint) as path:
            step = int((path / "step").read_text())
    asked = time.time()
    for op in core_context.searcher.operations():
        stamps = {"asked": asked, "op": time.time()}
        while step < op.length:
            time.sleep(STEP_S)
            step += 1
        stamps["trained"] = time.time()
        loss = final + (1 - final) * math.exp(-(0.15 + 1.2 * y) * step)
        with core_context.checkpoint.store_path({"steps_completed": step}) as (path, _):
            (path / "step").write_text(str(step))
        stamps["stored"] = time.time()
        op.report_completed(loss)
        asked = stamps["reported"] = time.time()
        ops.append(stamps)
T["left"] = time.time()
usage = resource.getrusage(resource.RUSAGE_SELF)
record = {
    "pid": os.getpid(),
    "parent": os.getppid(),
    **T,
    "ops": ops,
    "minflt": usage.ru_minflt,
    "cpu_user": usage.ru_utime,
    "cpu_system": usage.ru_stime,
}
stamps_dir = str(info.trial.hparams["stamps"])
with open(os.path.join(stamps_dir, f"segment-{os.getpid()}.json"), "w") as handle:
    json.dump(record, handle)
