"""``store_path(shard=True)`` across real processes: every rank writes its part over the
real ``DistributedContext``, and the parts become one checkpoint, or every rank raises."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_distributed_context import free_port, run_scripts

ROOT = Path(__file__).resolve().parents[2]

# One rank: saves its part as the scenario says; prints what it got, as JSON.
RANK = """
import json, sys
from pathlib import Path
from rung.worker.core import CheckpointContext, DistributedContext

rank, size, per_host, port = (int(v) for v in sys.argv[1:5])
root, reports, scenario = Path(sys.argv[5]), Path(sys.argv[6]), sys.argv[7]
cross_rank, local_rank = divmod(rank, per_host)

def report(storage_id, steps, metadata, size_bytes):
    with reports.open("a") as out:
        # As the worker's channel sends it: JSON has no NaN.
        line = json.dumps([rank, storage_id, steps, metadata, size_bytes], allow_nan=False)
        out.write(line + "\\n")

with DistributedContext(
    rank=rank, size=size, local_rank=local_rank, local_size=per_host,
    cross_rank=cross_rank, cross_size=size // per_host, chief_ip="127.0.0.1",
    pub_port=port, pull_port=port + 100, timeout=30,
) as dist:
    checkpoints = CheckpointContext(root, report, distributed=dist)
    metadata = {f"part_{rank}": rank, "shared": {"b": 1, "a": [1.5]}}  # the same everywhere
    if scenario == "nan" and rank == 3:
        metadata["loss"] = float("nan")
    if rank == 0 and scenario != "no steps":
        metadata["steps_completed"] = "seven" if scenario == "bad steps" else 7
    if scenario == "metadata conflict" and rank == 2:
        metadata["steps_completed"] = 8
    out = {"rank": rank}
    try:
        with checkpoints.store_path(metadata, shard=True) as (path, storage_id):
            out["storage_id"] = storage_id
            name = f"model-{rank}.bin"
            if scenario == "file conflict" and rank in (1, 3):
                name = "same.bin"
            (path / "shards").mkdir()
            (path / "shards" / name).write_bytes(bytes([rank]) * (rank + 1))
            if scenario == "link" and rank == 0:
                (path / "shards" / "a").symlink_to(root.parent / "outside")
            if scenario == "link" and rank == 1:
                (path / "shards" / "a").mkdir()
                (path / "shards" / "a" / "precious").write_text("rank 1's")
            if scenario == "rank fails" and rank == 1:
                raise ValueError("rank 1 ran out of memory")
            if scenario == "rank exits" and rank == 2:
                raise SystemExit("rank 2 was told to stop")
            metadata["steps_completed"] = "changed after the call: ignored"
        with checkpoints.restore_path(storage_id) as restored:
            out["restored"] = sorted(p.name for p in restored.rglob("*.bin"))
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _save(tmp_path: Path, scenario: str, hosts: int, per_host: int) -> list[dict[str, Any]]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    root, reports = tmp_path / "checkpoints", tmp_path / "reports.jsonl"
    port, size = free_port(), hosts * per_host
    common = [str(size), str(per_host), str(port), str(root), str(reports), scenario]
    return run_scripts(script, [[str(rank), *common] for rank in range(size)])


@pytest.mark.parametrize(("hosts", "per_host"), [(1, 4), (2, 2)])
def test_every_ranks_part_becomes_one_checkpoint(tmp_path: Path, hosts: int, per_host: int) -> None:
    outputs = _save(tmp_path, "parts", hosts, per_host)
    assert [out.get("error") for out in outputs] == [None] * 4
    storage_ids = {out["storage_id"] for out in outputs}
    assert len(storage_ids) == 1  # the chief's, on every rank
    (storage_id,) = storage_ids
    final = tmp_path / "checkpoints" / storage_id
    assert sorted(p.name for p in (final / "shards").iterdir()) == [
        f"model-{rank}.bin" for rank in range(4)
    ]
    assert (final / "shards" / "model-3.bin").read_bytes() == b"\x03" * 4
    metadata = json.loads((final / "metadata.json").read_text())
    assert metadata.pop("shared") == {"a": [1.5], "b": 1}
    assert metadata == {"steps_completed": 7, "part_0": 0, "part_1": 1, "part_2": 2, "part_3": 3}
    # Reported once, by the chief, with every part's size.
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == 1
    assert reports[0][:3] == [0, storage_id, 7]
    assert reports[0][4] == sum(rank + 1 for rank in range(4)) + len(
        (final / "metadata.json").read_bytes()
    )
    # Nothing of the parts is left beside it, and every rank restores the whole.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [storage_id]
    assert all(out["restored"] == [f"model-{r}.bin" for r in range(4)] for out in outputs)


@pytest.mark.parametrize(
    ("scenario", "every_rank_says"),
    [
        ("file conflict", r"ranks 1 and 3 both wrote 'shards/same.bin'"),
        ("metadata conflict", r"'steps_completed' is 7 on rank 0 and 8 on rank 2"),
        ("no steps", r"must contain 'steps_completed'"),
        ("rank fails", r"rank 1 failed while writing its part of checkpoint .*ran out of memory"),
        ("rank exits", r"rank 2 failed while writing its part .*SystemExit: rank 2 was told"),
        ("bad steps", r"'steps_completed' is 'seven'; it must be a whole number"),
        ("nan", r"rank 3 could not start its part: ValueError: checkpoint metadata hold NaN"),
        ("link", r"rank 0 wrote 'shards/a' as a file or link and rank 1 wrote 'shards/a/precious'"),
    ],
)
def test_a_bad_part_fails_every_rank_and_saves_nothing(
    tmp_path: Path, scenario: str, every_rank_says: str
) -> None:
    (tmp_path / "outside").mkdir()
    outputs = _save(tmp_path, scenario, 2, 2)
    for out in outputs:
        if scenario == "rank fails" and out["rank"] == 1:
            assert out["error"] == "ValueError: rank 1 ran out of memory"  # its own error
        elif scenario == "rank exits" and out["rank"] == 2:
            assert out["error"] == "SystemExit: rank 2 was told to stop"
        else:
            assert out["error"].startswith("ShardedCheckpointError: "), out
            assert re.search(every_rank_says, out["error"]), out["error"]
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert not (tmp_path / "reports.jsonl").exists()
    assert list((tmp_path / "outside").iterdir()) == []  # nothing went out through a link
