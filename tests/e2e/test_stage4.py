"""Stage 4 of the Core API tutorial on eight slots: the script launches a process per
slot through ``python3 -m determined.launch.wrap_rank`` (Determined's module name, which
is Rung's inside a trial), the ranks meet, only the chief reports, and the lines of
each rank can be read apart.

On RabbitMQ through the ``rung`` command (searcher and worker processes), and on the
in-process broker for Determined's other names: ``import determined as det`` and
``python3 -m determined.launch.torch_distributed`` in a config's entrypoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import rung
from tests.e2e.conftest import EXAMPLES, Cluster
from tests.support import wait_for_async, wait_sync

STAGE4 = EXAMPLES / "4_distributed.yaml"


def _one_trial_to_the_end(
    cluster: Cluster, config: Path, context: Path
) -> tuple[str, dict[str, Any]]:
    """Create the experiment, wait until it completes; its id and its one trial."""
    created = cluster.create(config, context, follow=False)
    assert created.returncode == 0, created.stderr
    experiment_id = created.stdout.strip()
    done = cluster.rung("experiment", "wait", experiment_id, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED", summary
    (trial,) = summary["trials"]
    return experiment_id, trial


@pytest.mark.rabbitmq
def test_stage_4_on_eight_slots_of_one_worker(cluster: Cluster) -> None:
    cluster.start_worker("w8", 8)
    experiment_id, trial = _one_trial_to_the_end(cluster, STAGE4, EXAMPLES)
    increment_by = trial["hparams"]["increment_by"]
    # Every one of the 100 steps adds all eight ranks' increments (allgather).
    assert trial["metric"] == 100 * 8 * increment_by

    def rank_lines(rank: int) -> list[dict[str, object]]:
        out = cluster.rung("trial", "logs", experiment_id, "1", "--rank", str(rank), "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    # Lines are shipped in batches: wait until the last ranks' are stored.
    wait_sync(lambda: any("worker starting" in str(x["text"]) for x in rank_lines(7)), 30, "rank 7")
    for rank in (0, 3, 7):
        lines = rank_lines(rank)
        assert {line["rank"] for line in lines} == {rank}
        assert any(line["text"] == "worker starting" for line in lines)
        # Only the chief prints the sum, and no line keeps its tag.
        assert any(str(line["text"]).startswith("x is now") for line in lines) == (rank == 0)
        assert not any(str(line["text"]).startswith("[rank=") for line in lines)
    text = cluster.rung("trial", "logs", experiment_id, "1", "--rank", "3")
    assert "[rank=3] worker starting" in text.stdout


AS_DETERMINED = """
import determined as det

dist = det.core.DistributedContext.from_torch_distributed()
with det.core.init(distributed=dist) as core:
    for op in core.searcher.operations():
        ranks = core.distributed.allgather(dist.get_rank())
        print("ranks", ranks, "slots", det.get_cluster_info().slot_ids, flush=True)
        if dist.get_rank() == 0:
            op.report_completed(float(sum(ranks)))
"""


async def test_determineds_names_run_unchanged_in_a_trial(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "train.py").write_text(AS_DETERMINED)
    config = {
        "name": "as-determined",
        "entrypoint": "python3 -m determined.launch.torch_distributed -- python3 train.py",
        "searcher": {"name": "single", "metric": "x", "max_length": 1},
        "resources": {"slots_per_trial": 3},
        "max_restarts": 0,
    }
    async with rung.Client.local(tmp_path / "state", slots=3) as client:
        experiment = await client.create_experiment(config, context)
        assert await experiment.wait(timeout=180) == "COMPLETED"
        best = await experiment.best_trial()
        assert best is not None
        assert best.metric == 3.0  # 0 + 1 + 2

        async def every_rank_spoke() -> bool:
            lines = [line async for line in experiment.logs(best.trial_id)]
            return {line.rank for line in lines if line.text.startswith("ranks")} == {0, 1, 2}

        await wait_for_async(every_rank_spoke, timeout=30, what="every rank's line")


# A rank that breaks down mid-step, once: the trial's attempt ends, and the next one
# resumes from the chief's last checkpoint.
CRASHES_ONCE = """
import pathlib, sys, time
import rung as det

info = det.get_cluster_info()
marker = pathlib.Path(info.trial.hparams["marker"])
dist = det.core.DistributedContext.from_torch_distributed()
with det.core.init(distributed=dist) as core:
    x, step = 0, 0
    if info.latest_checkpoint is not None:
        with core.checkpoint.restore_path(info.latest_checkpoint) as path:
            x, step = (int(v) for v in (path / "state").read_text().split(","))
        if dist.get_rank() == 0:
            print(f"resumed at step {step} with x {x}", flush=True)
    for op in core.searcher.operations():
        while step < op.length:
            x += sum(core.distributed.allgather(1))
            step += 1
            if step == 25 and dist.get_rank() == 1 and not marker.exists():
                marker.write_text("crashed")
                sys.exit("rank 1 breaks down mid-step")
            if step % 10 == 0 and dist.get_rank() == 0:
                with core.checkpoint.store_path({"steps_completed": step}) as (path, _):
                    (path / "state").write_text(f"{x},{step}")
                op.report_progress(step)
        if dist.get_rank() == 0:
            core.train.report_validation_metrics(step, {"x": x})
            op.report_completed(x)
"""


@pytest.mark.rabbitmq
def test_a_rank_that_crashes_mid_step_ends_the_attempt_and_the_next_resumes(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.faults.checker import check_invariants

    context = tmp_path / "context"
    context.mkdir()
    (context / "crashes.py").write_text(CRASHES_ONCE)
    config = tmp_path / "crashes.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "rank-crash",
                "entrypoint": "python3 -m rung.launch.torch_distributed -- python3 crashes.py",
                "hyperparameters": {"marker": str(tmp_path / "crashed")},
                "searcher": {"name": "single", "metric": "x", "max_length": 40},
                "resources": {"slots_per_trial": 2},
                "max_restarts": 1,
            }
        )
    )
    cluster.start_worker("w2", 2)
    experiment_id, trial = _one_trial_to_the_end(cluster, config, context)
    assert trial["restarts"] == 1  # the breakdown counted once
    assert trial["metric"] == 2 * 40  # steps 21..25 were trained again, from step 20's x

    def resumed() -> bool:
        out = cluster.rung("trial", "logs", experiment_id, "1", "--rank", "0", "--json")
        return any(
            json.loads(line)["text"] == "resumed at step 20 with x 40"
            for line in out.stdout.splitlines()
        )

    wait_sync(resumed, 30, "the chief's resume line")
    out = cluster.rung("trial", "logs", experiment_id, "1", "--rank", "1")
    assert "[rank=1] rank 1 breaks down mid-step" in out.stdout
    check_invariants(cluster, experiment_id, bound_s=120, planned_trials=1)
