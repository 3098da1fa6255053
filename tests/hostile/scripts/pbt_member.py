"""A PBT member that misbehaves as ``hparams["misbehave"]`` says: ``no_checkpoint``
(never saves one), ``nan`` (reports infinity when lr > 0.3, NaN when lr > 0.1), ``crash`` (exits
1 in its first operation), ``late_checkpoint`` (saves only after reporting, 2 s later)."""

import json
import math
import time

import rung as det

LATE_S = 2.0

info = det.get_cluster_info()
assert info is not None
hparams = info.trial.hparams
misbehave = hparams["misbehave"]
lr = float(hparams["lr"])
with det.core.init() as core:
    steps, loss = 0, 1.0
    if info.latest_checkpoint is not None:
        with core.checkpoint.restore_path(info.latest_checkpoint) as path:
            state = json.loads((path / "state.json").read_text())
            steps, loss = state["steps"], state["loss"]
    for op in core.searcher.operations():
        if misbehave == "crash":
            raise SystemExit(1)
        while steps < op.length:
            loss = loss * (1 - 0.5 * lr) + 0.05 * lr * lr
            steps += 1
        metric = loss
        if misbehave == "nan" and lr > 0.1:
            metric = math.inf if lr > 0.3 else math.nan
        if misbehave == "late_checkpoint":
            op.report_completed(metric)
            # Long after every member's report (they train alike): at the round's end the
            # best member's checkpoint is surely still missing, and is waited for.
            time.sleep(LATE_S)
        if misbehave != "no_checkpoint":
            with core.checkpoint.store_path({"steps_completed": steps}) as (path, _):
                (path / "state.json").write_text(json.dumps({"steps": steps, "loss": loss}))
        if misbehave != "late_checkpoint":
            op.report_completed(metric)
