"""Stage 4: one trial across a process per slot, in the form of Determined's tutorial.

The script is its own launcher: ``python3 4_distributed.py launcher`` (the entrypoint)
starts one worker process per slot, each through ``python3 -m
determined.launch.wrap_rank`` so that its lines carry its rank (inside a Rung trial,
``determined.launch`` is Rung's), and ends them all when one fails. Each worker builds a
``DistributedContext`` from the cluster info, trains to each operation's length with
every rank's increment summed by ``allgather``, and only the chief reports metrics,
progress and checkpoints; every rank asks whether to stop. A restarted or resumed trial
goes on from its latest checkpoint.
"""

import logging
import pathlib
import queue
import subprocess
import sys
import threading
import time

import rung as det


def save_state(x: int, steps_completed: int, trial_id: int, path: pathlib.Path) -> None:
    (path / "state").write_text(f"{x},{steps_completed},{trial_id}")


def load_state(trial_id: int, path: pathlib.Path) -> tuple[int, int]:
    x, steps_completed, ckpt_trial_id = (int(v) for v in (path / "state").read_text().split(","))
    return (x, steps_completed) if ckpt_trial_id == trial_id else (x, 0)


def main(
    core_context: det.core.Context,
    latest_checkpoint: str | None,
    trial_id: int,
    increment_by: int,
) -> None:
    dist = core_context.distributed
    chief = dist.get_rank() == 0
    x, batch = 0, 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            x, batch = load_state(trial_id, path)
    last_checkpoint_batch = batch
    for op in core_context.searcher.operations():
        while batch < op.length:
            # Every rank's increment, summed: the collectives at work.
            x += sum(dist.allgather(increment_by))
            batch += 1
            time.sleep(0.01)
            if chief:
                print("x is now", x)
            if batch % 10 == 0:
                if chief:  # only the chief reports and saves
                    core_context.train.report_training_metrics(batch, {"x": x})
                    op.report_progress(batch)
                    with core_context.checkpoint.store_path({"steps_completed": batch}) as (
                        path,
                        _,
                    ):
                        save_state(x, batch, trial_id, path)
                    last_checkpoint_batch = batch
                if core_context.preempt.should_preempt():  # every rank, in step
                    return
        if chief:
            core_context.train.report_validation_metrics(batch, {"x": x})
            op.report_completed(x)
    if chief and last_checkpoint_batch != batch:
        with core_context.checkpoint.store_path({"steps_completed": batch}) as (path, _):
            save_state(x, batch, trial_id, path)


def launcher_main(slots_per_node: int, cross_rank: int) -> int:
    """One worker process per slot of this machine; the first failure ends the rest."""
    processes = []
    for local_rank in range(slots_per_node):
        rank = cross_rank * slots_per_node + local_rank
        command = ["python3", "-m", "determined.launch.wrap_rank", str(rank), "--"]
        command += ["python3", __file__, "worker", str(rank), str(local_rank)]
        processes.append(subprocess.Popen(command))  # noqa: S603 (this script, again)
    exits: queue.Queue[tuple[subprocess.Popen[bytes], int]] = queue.Queue()
    waiters = [threading.Thread(target=lambda p=p: exits.put((p, p.wait()))) for p in processes]
    for waiter in waiters:
        waiter.start()
    first_failure = 0
    for _ in processes:
        process, code = exits.get()
        if code != 0 and first_failure == 0:
            first_failure = code if code > 0 else 128 - code  # a signal, as a shell says
            for other in processes:
                if other is not process:
                    other.terminate()  # wrap_rank passes it on to its rank
    for waiter in waiters:
        waiter.join()
    return first_failure


def worker_main(info: det.ClusterInfo, rank: int, local_rank: int) -> None:
    slots_per_node, num_nodes = len(info.slot_ids), len(info.container_addrs)
    distributed = det.core.DistributedContext(
        rank=rank,
        size=num_nodes * slots_per_node,
        local_rank=local_rank,
        local_size=slots_per_node,
        cross_rank=info.container_rank,
        cross_size=num_nodes,
        chief_ip=info.container_addrs[0],
    )
    with det.core.init(distributed=distributed) as core_context:
        main(
            core_context,
            info.latest_checkpoint,
            info.trial.trial_id,
            increment_by=info.trial.hparams["increment_by"],
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT, stream=sys.stdout)
    cluster = det.get_cluster_info()
    if cluster is None:
        sys.exit("this example runs as a trial: rung run examples/core_api/4_distributed.yaml")
    if sys.argv[1:2] == ["launcher"]:
        sys.exit(launcher_main(len(cluster.slot_ids), cluster.container_rank))
    if sys.argv[1:2] == ["worker"]:
        print("worker starting")
        worker_main(cluster, rank=int(sys.argv[2]), local_rank=int(sys.argv[3]))
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} launcher | worker RANK LOCAL_RANK (got {sys.argv[1:]})")
