"""The dispatch-latency workload: the sleep workload's trial, with timestamps.

It writes one JSON line per moment to ``$RUNG_BENCH_TIMES/<pid>.jsonl``: when the script
starts (its first line, so the process start is included), when each operation arrives,
when it starts saving its checkpoint, and when it reports the operation completed (just
before the call). Same clock as the searcher's log.
"""

import json
import math
import os
import time

STARTED = time.time()

import rung as det  # noqa: E402 (the start is timed before anything else)

STEP_S = float(os.environ.get("RUNG_BENCH_STEP_S", "0.02"))
info = det.get_cluster_info()
if info is None or info.trial is None:
    raise SystemExit("run me on a Rung worker")
trial = info.trial.trial_id
x, y = float(info.trial.hparams["x"]), float(info.trial.hparams["y"])
final = (x - 0.3) ** 2 + (y - 0.6) ** 2
out = open(  # noqa: SIM115 (open for the life of the process)
    os.path.join(os.environ["RUNG_BENCH_TIMES"], f"{os.getpid()}.jsonl"), "a", buffering=1
)


def note(event: str, **fields: object) -> None:
    fields.update(event=event, t=time.time(), trial=trial, worker=info.worker_id)
    out.write(json.dumps(fields) + "\n")


note("start", t0=STARTED)
with det.core.init() as core_context:
    step = 0
    if info.latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(info.latest_checkpoint) as path:
            step = int((path / "step").read_text())
    for op in core_context.searcher.operations():
        note("op", length=op.length)
        while step < op.length:
            time.sleep(STEP_S)
            step += 1
        loss = final + (1 - final) * math.exp(-(0.15 + 1.2 * y) * step)
        note("saving", length=op.length)
        with core_context.checkpoint.store_path({"steps_completed": step}) as (path, _):
            (path / "step").write_text(str(step))
        note("completed", length=op.length)
        op.report_completed(loss)
