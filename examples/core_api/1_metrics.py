"""Stage 1: report training and validation metrics through the Core API."""

import logging
import time

import rung as det


def main(core_context: det.core.Context, increment_by: int) -> None:
    x = 0
    for batch in range(100):
        x += increment_by
        steps_completed = batch + 1
        time.sleep(0.01)
        if steps_completed % 10 == 0:
            core_context.train.report_training_metrics(steps_completed, {"x": x})
            core_context.train.report_progress(steps_completed / 100)
    core_context.train.report_validation_metrics(steps_completed, {"x": x})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    with det.core.init() as core_context:
        main(core_context, increment_by=1)
