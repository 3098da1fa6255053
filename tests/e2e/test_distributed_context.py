"""``DistributedContext`` across real processes: collectives over TCP to the chief."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rung.worker.core import DistributedContext, DistributedError

ROOT = Path(__file__).resolve().parents[2]

# One rank: its collectives, written as JSON on stdout.
RANK = """
import json, os, sys
from rung.worker.core import DistributedContext

rank, local_rank, cross_rank = (int(v) for v in sys.argv[1:4])
size, local_size, cross_size, port = (int(v) for v in sys.argv[4:8])
with DistributedContext(
    rank=rank, size=size, local_rank=local_rank, local_size=local_size,
    cross_rank=cross_rank, cross_size=cross_size, chief_ip="127.0.0.1",
    pub_port=port, pull_port=port + 100, timeout=30,
) as dist:
    out = {
        "gather": dist.gather({"rank": rank}),
        "allgather": dist.allgather(rank * 10),
        "broadcast": dist.broadcast("from the chief" if rank == 0 else "ignored"),
        "allgather_local": dist.allgather_local(rank),
        "gather_local": dist.gather_local(local_rank),
        "broadcast_local": dist.broadcast_local(f"host {cross_rank}" if local_rank == 0 else None),
        "again": dist.allgather([rank, None, 1.5, "x"]),
    }
print(json.dumps(out))
"""


def free_port() -> int:
    """A port free now, with room above it for the local chiefs' (+100, +101)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 65000:
            return port


def run_ranks(tmp_path: Path, hosts: int, per_host: int) -> list[dict[str, object]]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port = free_port()
    size = hosts * per_host
    processes = []
    for rank in range(size):
        cross_rank, local_rank = divmod(rank, per_host)
        args = [rank, local_rank, cross_rank, size, per_host, hosts, port]
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    return outputs


@pytest.mark.parametrize(("hosts", "per_host"), [(1, 4), (2, 2)])
def test_collectives_between_processes(tmp_path: Path, hosts: int, per_host: int) -> None:
    """Four ranks, on one host or as two hosts of two (each with its local chief)."""
    results = run_ranks(tmp_path, hosts, per_host)
    size = hosts * per_host
    for rank, out in enumerate(results):
        local_rank = rank % per_host
        host = rank // per_host
        assert out["gather"] == ([{"rank": r} for r in range(size)] if rank == 0 else None)
        assert out["allgather"] == [r * 10 for r in range(size)]
        assert out["broadcast"] == "from the chief"
        assert out["allgather_local"] == [host * per_host + i for i in range(per_host)]
        assert out["gather_local"] == (list(range(per_host)) if local_rank == 0 else None)
        assert out["broadcast_local"] == f"host {host}"
        assert out["again"] == [[r, None, 1.5, "x"] for r in range(size)]


def test_one_rank_needs_no_network() -> None:
    with DistributedContext() as dist:
        assert dist.allgather(3) == [3]
        assert dist.gather("x") == ["x"]
        assert dist.broadcast({"a": 1}) == {"a": 1}
        assert (dist.get_rank(), dist.get_size(), dist.get_num_agents()) == (0, 1, 1)


def test_what_is_not_json_is_refused_with_the_fix() -> None:
    with DistributedContext() as dist, pytest.raises(TypeError, match=r"JSON only.*tolist"):
        dist.allgather(object())


def test_inconsistent_ranks_are_refused_naming_each_problem() -> None:
    with pytest.raises(ValueError, match=r"rank 4 is not in \[0, size 4\)"):
        DistributedContext(rank=4, size=4, local_size=4)
    with pytest.raises(ValueError, match="local_size 3 x cross_size 1 is not size 4"):
        DistributedContext(rank=0, size=4, local_size=3)
    with pytest.raises(ValueError, match="chief_ip is required"):
        DistributedContext(rank=0, size=4, local_size=2, cross_size=2)


def test_a_missing_rank_fails_the_chief_in_time() -> None:
    port = free_port()
    with pytest.raises(DistributedError, match=r"ranks \[1\] did not connect"):
        DistributedContext(
            rank=0, size=2, local_size=2, pub_port=port, pull_port=port + 100, timeout=0.5
        )


def test_a_member_without_a_chief_fails_in_time() -> None:
    port = free_port()
    with pytest.raises(DistributedError, match="cannot reach the chief"):
        DistributedContext(
            rank=1,
            size=2,
            local_rank=1,
            local_size=2,
            pub_port=port,
            pull_port=port + 100,
            timeout=0.5,
        )


def test_from_torch_distributed_needs_torchruns_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun's environment"):
        DistributedContext.from_torch_distributed()
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    with DistributedContext.from_torch_distributed() as dist:
        assert (dist.get_rank(), dist.get_size(), dist.get_local_size()) == (0, 1, 1)


def test_core_init_takes_the_distributed_context() -> None:
    import rung as det

    dist = det.core.DistributedContext()
    with det.core.init(distributed=dist) as core_context:
        assert core_context.distributed is dist
