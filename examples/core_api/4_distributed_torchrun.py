"""Stage 4 with torchrun's environment: a process per slot, started by Rung's launcher:

    entrypoint: python3 -m rung.launch.torch_distributed -- python3 4_distributed_torchrun.py

Every rank gets the operations (the chief asks and broadcasts), sums every rank's
increment with ``allgather``, and stops together when asked to; only the chief reports.
"""

import logging
import time

import rung as det


def main(core_context: det.core.Context, increment_by: int) -> None:
    dist = core_context.distributed
    x = 0
    for op in core_context.searcher.operations():
        for batch in range(op.length):
            x += sum(dist.allgather(increment_by))
            time.sleep(0.01)
            steps_completed = batch + 1
            if dist.get_rank() == 0 and steps_completed % 10 == 0:
                core_context.train.report_training_metrics(steps_completed, {"x": x})
                op.report_progress(steps_completed)
            if core_context.preempt.should_preempt():
                return
        if dist.get_rank() == 0:
            core_context.train.report_validation_metrics(op.length, {"x": x})
            op.report_completed(x)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    distributed = det.core.DistributedContext.from_torch_distributed()
    with det.core.init(distributed=distributed) as core_context:
        main(core_context, increment_by=det.get_cluster_info().trial.hparams.get("increment_by", 1))
