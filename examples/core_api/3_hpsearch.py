"""Stage 3: a hyperparameter search. Train to each operation's absolute length, validate,
report the searcher metric, and checkpoint so a promoted trial resumes where it paused."""

import logging
import pathlib
import time

import rung as det


def save_state(x: int, steps_completed: int, trial_id: int, path: pathlib.Path) -> None:
    (path / "state").write_text(f"{x},{steps_completed},{trial_id}")


def load_state(trial_id: int, path: pathlib.Path) -> tuple[int, int]:
    x, steps_completed, ckpt_trial_id = (int(v) for v in (path / "state").read_text().split(","))
    if ckpt_trial_id != trial_id:
        return x, 0
    return x, steps_completed


def main(
    core_context: det.core.Context,
    latest_checkpoint: str | None,
    trial_id: int,
    increment_by: int,
    batch_sleep: float,
) -> None:
    x, batch = 0, 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            x, batch = load_state(trial_id, path)
    last_checkpoint_batch = batch
    for op in core_context.searcher.operations():
        while batch < op.length:
            x += increment_by
            batch += 1
            time.sleep(batch_sleep)
            if batch % 10 == 0:
                core_context.train.report_training_metrics(batch, {"x": x})
                op.report_progress(batch)
                with core_context.checkpoint.store_path({"steps_completed": batch}) as (
                    path,
                    _,
                ):
                    save_state(x, batch, trial_id, path)
                last_checkpoint_batch = batch
                if core_context.preempt.should_preempt():
                    return
        core_context.train.report_validation_metrics(batch, {"x": x})
        best = core_context.train.get_experiment_best_validation()
        logging.info("best validation so far: %s", best)
        op.report_completed(x)
    if last_checkpoint_batch != batch:
        with core_context.checkpoint.store_path({"steps_completed": batch}) as (path, _):
            save_state(x, batch, trial_id, path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    hparams = info.trial.hparams if info else {"increment_by": 1}
    with det.core.init() as core_context:
        main(
            core_context,
            info.latest_checkpoint if info else None,
            info.trial.trial_id if info else 1,
            increment_by=hparams["increment_by"],
            # How long a batch takes; 2 ms unless the config sets it (demos, tests).
            batch_sleep=hparams.get("batch_sleep", 0.002),
        )
