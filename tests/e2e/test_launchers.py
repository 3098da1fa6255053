"""The launchers: ``rung.launch.wrap_rank`` and ``rung.launch.torch_distributed`` on a
real trial of two slots (torchrun, gloo), and Determined's error for a multi-slot
trial that makes no ``DistributedContext``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rung
from tests.support import wait_for_async

ROOT = Path(__file__).resolve().parents[2]

DDP = """
import torch
import torch.distributed as torch_dist

import rung as det

torch_dist.init_process_group("gloo")
rank = torch_dist.get_rank()
dist = det.core.DistributedContext.from_torch_distributed()
with det.core.init(distributed=dist) as core:
    for op in core.searcher.operations():
        total = torch.tensor([float(rank + 1)])
        torch_dist.all_reduce(total)  # 1 + 2 over gloo
        ranks = core.distributed.allgather(rank)
        print(f"slots {det.get_cluster_info().slot_ids} ranks {ranks}", flush=True)
        if rank == 0:
            op.report_completed(float(total.item()) * op.length)
torch_dist.destroy_process_group()
"""

ONE_FAILS = """
import sys
import rung as det

dist = det.core.DistributedContext.from_torch_distributed()
with det.core.init(distributed=dist) as core:
    for op in core.searcher.operations():
        if dist.get_rank() == 1:
            sys.exit("rank 1 breaks down")
        dist.allgather("waits for rank 1 for ever")
"""

NO_CONTEXT = """
import rung as det

with det.core.init() as core:
    pass
"""


def config(entrypoint: str) -> dict[str, object]:
    return {
        "name": "two-slots",
        "entrypoint": entrypoint,
        "hyperparameters": {},
        "searcher": {"name": "single", "metric": "x", "max_length": 2},
        "resources": {"slots_per_trial": 2},
        "max_restarts": 0,
    }


def test_wrap_rank_tags_each_line_and_keeps_the_exit_code() -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = subprocess.run(
        [sys.executable, "-m", "rung.launch.wrap_rank", "7", "--", sys.executable, "-c", script],
        capture_output=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert done.stdout == b"[rank=7] out\n"
    assert done.stderr == b"[rank=7] err\n"
    assert done.returncode == 3
    bad = subprocess.run(
        [sys.executable, "-m", "rung.launch.wrap_rank", "NO_SUCH_VAR", "--", "true"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "neither a number nor the name of a variable" in bad.stderr


def test_wrap_rank_passes_progress_bars_and_endless_lines_on_as_they_come() -> None:
    script = (
        "import sys; sys.stdout.write('10%\\r50%\\r100%\\n');"
        " sys.stdout.write('x' * 200000); sys.stdout.flush()"
    )
    done = subprocess.run(
        [sys.executable, "-m", "rung.launch.wrap_rank", "2", "--", sys.executable, "-c", script],
        capture_output=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    out = done.stdout
    assert out.startswith(b"[rank=2] 10%\r[rank=2] 50%\r[rank=2] 100%\n")
    pieces = out.split(b"\n")[1:-1]
    assert [len(p) for p in pieces] == [len(b"[rank=2] ") + n for n in (65536, 65536, 65536, 3392)]


async def test_torchrun_runs_a_process_per_slot(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "ddp.py").write_text(DDP)
    entrypoint = "python3 -m rung.launch.torch_distributed -- python3 ddp.py"
    async with rung.Client.local(tmp_path / "state", slots=2) as client:
        experiment = await client.create_experiment(config(entrypoint), context)
        assert await experiment.wait(timeout=180) == "COMPLETED"
        best = await experiment.best_trial()
        assert best is not None
        assert best.metric == 6.0  # (1 + 2) all-reduced over gloo, times length 2
        tagged: list[int | None] = []

        async def both_tagged() -> bool:
            lines = [line async for line in experiment.logs(best.trial_id)]
            tagged[:] = [line.rank for line in lines if "ranks [0, 1]" in line.text]
            tagged.sort(key=lambda rank: -1 if rank is None else rank)
            return len(tagged) == 2

        await wait_for_async(both_tagged, timeout=30, what="both ranks' lines")
        assert tagged == [0, 1]  # the tag became the rank, and left the text
        ones = [line async for line in experiment.logs(best.trial_id, rank=1)]
        assert ones
        assert {line.rank for line in ones} == {1}
        assert not any(line.text.startswith("[rank=") for line in ones)


async def test_a_multi_slot_trial_without_a_distributed_context_is_told(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "plain.py").write_text(NO_CONTEXT)
    async with rung.Client.local(tmp_path / "state", slots=2) as client:
        experiment = await client.create_experiment(config("python3 plain.py"), context)
        await experiment.wait(timeout=120)
        (trial,) = await experiment.trials()
        assert trial.state == "ERRORED"

        async def told() -> bool:
            lines = [line.text async for line in experiment.logs(trial.trial_id)]
            return any("you must provide a valid DistributedContext" in line for line in lines)

        await wait_for_async(told, timeout=30, what="the DistributedContext error")


async def test_a_rank_that_fails_ends_the_trial_promptly(tmp_path: Path) -> None:
    """Rank 1 exits with an error while rank 0 waits for it in a collective (for up to
    10 minutes): the launcher stops rank 0, and the trial ends ERRORED at once."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "fails.py").write_text(ONE_FAILS)
    entrypoint = "python3 -m rung.launch.torch_distributed -- python3 fails.py"
    async with rung.Client.local(tmp_path / "state", slots=2) as client:
        experiment = await client.create_experiment(config(entrypoint), context)
        await experiment.wait(timeout=60)
        (trial,) = await experiment.trials()
        assert trial.state == "ERRORED"

        async def told() -> bool:
            lines = [line async for line in experiment.logs(trial.trial_id, rank=1)]
            return any(line.text.startswith("rank 1 breaks down") for line in lines)

        await wait_for_async(told, timeout=30, what="rank 1's last words")
