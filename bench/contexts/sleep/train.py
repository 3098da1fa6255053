"""The sleep workload (shared/reference/benchmarks.md §1): each step sleeps 20 ms, as
GPU time that uses no CPU, and the loss follows a curve set by x and y. It checkpoints
after each operation, so a promoted trial resumes where it paused."""

import math
import time

import rung as det

STEP_S = 0.02

info = det.get_cluster_info()
if info is None or info.trial is None:
    raise SystemExit("run me on a Rung worker")
x, y = float(info.trial.hparams["x"]), float(info.trial.hparams["y"])
final = (x - 0.3) ** 2 + (y - 0.6) ** 2

with det.core.init() as core_context:
    step = 0
    if info.latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(info.latest_checkpoint) as path:
            step = int((path / "step").read_text())
    for op in core_context.searcher.operations():
        while step < op.length:
            time.sleep(STEP_S)
            step += 1
        loss = final + (1 - final) * math.exp(-(0.15 + 1.2 * y) * step)
        with core_context.checkpoint.store_path({"steps_completed": step}) as (path, _):
            (path / "step").write_text(str(step))
        op.report_completed(loss)
