"""Stage 2: checkpoint every 10 batches, resume from the latest, stop when preempted."""

import logging
import pathlib
import time

import rung as det


def save_state(x: int, steps_completed: int, trial_id: int, path: pathlib.Path) -> None:
    (path / "state").write_text(f"{x},{steps_completed},{trial_id}")


def load_state(trial_id: int, path: pathlib.Path) -> tuple[int, int]:
    x, steps_completed, ckpt_trial_id = (int(v) for v in (path / "state").read_text().split(","))
    if ckpt_trial_id != trial_id:
        # A checkpoint of another trial (a warm start): keep x, restart the count.
        return x, 0
    return x, steps_completed


def main(
    core_context: det.core.Context, latest_checkpoint: str | None, trial_id: int, increment_by: int
) -> None:
    x, batch = 0, 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            x, batch = load_state(trial_id, path)
    while batch < 100:
        x += increment_by
        batch += 1
        time.sleep(0.01)
        if batch % 10 == 0:
            core_context.train.report_training_metrics(batch, {"x": x})
            with core_context.checkpoint.store_path({"steps_completed": batch}) as (path, _):
                save_state(x, batch, trial_id, path)
            if core_context.preempt.should_preempt():
                return
    core_context.train.report_validation_metrics(batch, {"x": x})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    trial_id = info.trial.trial_id if info else 1
    latest = info.latest_checkpoint if info else None
    with det.core.init() as core_context:
        main(core_context, latest, trial_id, increment_by=1)
