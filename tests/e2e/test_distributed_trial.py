"""A trial of three processes on a worker: the Core API across ranks.

The entrypoint is a launcher that starts three ranks of the same script; each makes a
``DistributedContext`` and calls ``det.core.init(distributed=...)``. Every rank iterates
the operations (the chief asks the worker and broadcasts each length), calls
``allgather`` and ``should_preempt()`` in step, and only the chief reports: a member's
report is refused with Determined's rule.
"""

from __future__ import annotations

from pathlib import Path

import rung
from tests.support import wait_for_async

LAUNCHER = """
import os, socket, subprocess, sys

import rung as det

SIZE = 3

def rank_main(rank: int, port: int) -> None:
    dist = det.core.DistributedContext(
        rank=rank, size=SIZE, local_rank=rank, local_size=SIZE,
        pub_port=port, pull_port=port + 1, timeout=60,
    )
    with det.core.init(distributed=dist) as core:
        total = 0
        for op in core.searcher.operations():
            while total < 6 * op.length:
                total += sum(core.distributed.allgather(rank + 1))  # 1 + 2 + 3
                if core.preempt.should_preempt():
                    return
            if rank == 0:
                core.train.report_validation_metrics(op.length, {"x": total})
                op.report_completed(total)
            else:
                try:
                    op.report_completed(total)
                except RuntimeError as exc:
                    # One write: the ranks share the pipe, and print's text and its
                    # newline are two writes, which another rank's line can split.
                    os.write(1, f"rank {rank} refused: {exc}\\n".encode())

if sys.argv[1:2] == ["rank"]:
    rank_main(int(sys.argv[2]), int(sys.argv[3]))
else:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = [
        subprocess.Popen([sys.executable, __file__, "rank", str(r), str(port)])
        for r in range(SIZE)
    ]
    codes = [p.wait() for p in ranks]
    sys.exit(next((c for c in codes if c), 0))
"""

CONFIG = {
    "name": "three-ranks",
    "entrypoint": "python3 launcher.py",
    "hyperparameters": {},
    "searcher": {"name": "single", "metric": "x", "max_length": 4},
    "max_restarts": 0,
}


async def test_three_ranks_share_operations_and_only_the_chief_reports(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "launcher.py").write_text(LAUNCHER)
    async with rung.Client.local(tmp_path / "state") as client:
        experiment = await client.create_experiment(CONFIG, context)
        assert await experiment.wait(timeout=120) == "COMPLETED"
        best = await experiment.best_trial()
        assert best is not None
        assert best.metric == 24  # 4 steps of 1 + 2 + 3, gathered on every rank
        reports = await experiment.metrics()
        assert [(r.group, r.metrics) for r in reports] == [("validation", {"x": 24})]
        # The members' lines may reach the store after the experiment ended: wait.
        refused: list[str] = []

        async def both_refused() -> bool:
            lines = [line.text async for line in experiment.logs(best.trial_id)]
            refused[:] = [line for line in lines if "refused: only the chief (rank 0)" in line]
            return len(refused) == 2

        await wait_for_async(both_refused, timeout=30, what="both members' refusals")
        assert sorted(line.split()[1] for line in refused) == ["1", "2"]
