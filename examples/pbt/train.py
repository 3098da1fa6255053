"""Population-based training with the Core API: a model whose best learning rate
changes as it trains (the simulator's ``lrsched``, run for real in a process).

Each batch with learning rate ``lr`` takes the loss ``L`` to ``L * (1 - 0.5 lr) +
0.05 lr**2``: a large rate learns fast but settles high, a small one settles low but
slowly, so a rate that starts high and decays wins. PBT finds such a schedule: a trial
that copies another starts from that trial's checkpoint (``latest_checkpoint``) with its
own, perturbed, ``lr``. The checkpoint holds the loss, the steps and the lineage, so a
copy continues exactly where its source stopped, and says where it came from.

The script is written against Determined's Core API; only its import line differs.
"""

import json
import logging
import time

import rung as det

A, B = 0.5, 0.05


def load(core_context: det.core.Context, uuid: str) -> dict:
    with core_context.checkpoint.restore_path(uuid) as path:
        return json.loads((path / "state.json").read_text())


def save(core_context: det.core.Context, state: dict) -> None:
    metadata = {"steps_completed": state["steps"]}
    with core_context.checkpoint.store_path(metadata) as (path, _):
        (path / "state.json").write_text(json.dumps(state))


def main(core_context: det.core.Context, info: det.ClusterInfo) -> None:
    hparams = info.trial.hparams
    lr = float(hparams["lr"])
    state = {"loss": 1.0, "steps": 0, "lineage": []}
    if info.latest_checkpoint is not None:
        # A trial resuming, or a copy of another trial: both continue its checkpoint.
        state = load(core_context, info.latest_checkpoint)
        logging.info(
            "trial %s continues from checkpoint %s at %s steps (loss %.4f), lr %.4g",
            info.trial.trial_id,
            info.latest_checkpoint,
            state["steps"],
            state["loss"],
            lr,
        )
    if not state["lineage"] or state["lineage"][-1]["trial"] != info.trial.trial_id:
        state["lineage"].append({"trial": info.trial.trial_id, "from": state["steps"], "lr": lr})
    for op in core_context.searcher.operations():
        while state["steps"] < op.length:
            state["loss"] = state["loss"] * (1 - A * lr) + B * lr * lr
            state["steps"] += 1
            time.sleep(float(hparams.get("batch_sleep", 0.001)))
        core_context.train.report_validation_metrics(state["steps"], {"loss": state["loss"]})
        save(core_context, state)  # before reporting: a copy finds it at once
        op.report_completed(state["loss"])
        if core_context.preempt.should_preempt():
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    cluster_info = det.get_cluster_info()
    assert cluster_info is not None, "run this script as a Rung (or Determined) trial"
    with det.core.init() as context:
        main(context, cluster_info)
