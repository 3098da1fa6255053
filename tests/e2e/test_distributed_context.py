"""``DistributedContext`` across real processes: collectives over TCP to the chief."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def run_scripts(script: Path, args: list[list[str]]) -> list[dict[str, Any]]:
    """``script`` in a process per argument list, at once; each one's JSON output."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), *rank_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for rank_args in args
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err.decode()
            outputs.append(json.loads(out))
    finally:  # one rank's failure leaves no other running, nor its pipes open
        for process in processes:
            if process.returncode is None:
                process.kill()
                process.communicate()
    return outputs


def run_ranks(tmp_path: Path, hosts: int, per_host: int) -> list[dict[str, Any]]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port = free_port()
    size = hosts * per_host
    args = []
    for rank in range(size):
        cross_rank, local_rank = divmod(rank, per_host)
        args.append([str(v) for v in (rank, local_rank, cross_rank, size, per_host, hosts, port)])
    return run_scripts(script, args)


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
    with pytest.raises(DistributedError, match="cannot join the chief"):
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


def test_strangers_on_the_chiefs_port_neither_stop_nor_join_the_trial() -> None:
    """A port scan, garbage, a huge length and a hello with a wrong token come first; the
    chief closes each and still meets its real member, who brings the trial's token."""
    port = free_port()
    made: dict[int, DistributedContext] = {}

    def rank(index: int) -> None:
        made[index] = DistributedContext(
            rank=index,
            size=2,
            local_rank=index,
            local_size=2,
            pub_port=port,
            pull_port=port + 100,
            timeout=20,
            token="the-trial's-token",  # noqa: S106 (a test's token)
        )

    chief = threading.Thread(target=rank, args=(0,))
    chief.start()
    strangers = [
        b"",  # connect and close: a port scan
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a huge length, then garbage
        struct.pack(">I", 5) + b"{nope",  # the right length, no JSON
        _hello({"index": 1, "size": 2, "token": "a guess"}),
    ]
    for payload in strangers:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port + 100), timeout=2) as sock:
                    sock.sendall(payload)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    member = threading.Thread(target=rank, args=(1,))
    member.start()
    chief.join(30)
    member.join(30)
    assert set(made) == {0, 1}
    results: dict[int, object] = {}

    def gather(index: int) -> None:
        results[index] = made[index].allgather({"rank": index, "key": (1, 2)})

    threads = [threading.Thread(target=gather, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Every rank gets the same JSON, the chief too (a tuple comes back a list).
    expected = [{"rank": 0, "key": [1, 2]}, {"rank": 1, "key": [1, 2]}]
    assert results == {0: expected, 1: expected}
    for context in made.values():
        context.close()


def _hello(data: dict[str, object]) -> bytes:
    body = json.dumps(data).encode()
    return struct.pack(">I", len(body)) + body


def test_only_the_chief_saves_a_checkpoint_without_shard(tmp_path: Path) -> None:
    from rung.worker.core import CheckpointContext

    member = CheckpointContext(tmp_path, lambda *_: None, distributed=_Rank(1))
    with pytest.raises(RuntimeError, match=r"only the chief \(rank 0\) saves"):  # noqa: SIM117
        with member.store_path({"steps_completed": 1}):
            pass
    assert list(tmp_path.iterdir()) == []


class _Rank:
    """A rank of two, for the checks made before any collective."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def get_rank(self) -> int:
        return self.rank

    def get_size(self) -> int:
        return 2

    def gather(self, stuff: object) -> list[object] | None:
        raise AssertionError("no collective is expected")

    def broadcast(self, stuff: object) -> object:
        raise AssertionError("no collective is expected")
