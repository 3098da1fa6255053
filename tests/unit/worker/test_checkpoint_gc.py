"""A worker runs DeleteCheckpoints: only ``<checkpoint_root>/<uuid>`` directories of an
experiment's own root, nothing outside it, and the same command twice is harmless."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rung.broker.schemas import DeleteCheckpoints
from rung.worker.checkpoint_gc import CheckpointGCRefusedError, delete_checkpoints

EXP = "exp-0123abcd"
A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"
C = "00000000-0000-4000-8000-00000000000c"


def checkpoint(root: Path, uuid: str) -> Path:
    path = root / uuid
    (path / "sub").mkdir(parents=True)
    (path / "metadata.json").write_text('{"steps_completed": 1}')
    (path / "sub" / "weights").write_bytes(b"x" * 10)
    return path


def command(root: Path | str, *uuids: str, experiment_id: str = EXP) -> DeleteCheckpoints:
    return DeleteCheckpoints(
        experiment_id=experiment_id, checkpoint_root=str(root), uuids=list(uuids)
    )


def test_deletes_the_named_checkpoints_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / EXP
    for uuid in (A, B, C):
        checkpoint(root, uuid)
    assert delete_checkpoints(command(root, A, C)) == [A, C]
    assert sorted(p.name for p in root.iterdir()) == [B]
    assert (root / B / "sub" / "weights").is_file()


def test_idempotent_a_missing_checkpoint_is_fine(tmp_path: Path) -> None:
    root = tmp_path / EXP
    checkpoint(root, A)
    assert delete_checkpoints(command(root, A, B)) == [A]
    assert delete_checkpoints(command(root, A, B)) == []  # delivered again
    assert delete_checkpoints(command(tmp_path / "nowhere" / EXP, A)) == []
    # A deletion cut short (renamed, not yet removed) is finished by the next delivery.
    half = root / f".deleting-{C}"
    (half / "sub").mkdir(parents=True)
    assert delete_checkpoints(command(root, C)) == []
    assert not half.exists()


def test_a_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / EXP
    root.mkdir()
    precious = tmp_path / "precious"
    (precious / "data").mkdir(parents=True)
    os.symlink(precious, root / A)
    (root / B).write_text("a file, not a checkpoint")
    assert delete_checkpoints(command(root, A, B)) == []
    assert (precious / "data").is_dir()
    assert (root / A).is_symlink()
    assert (root / B).is_file()


def test_a_root_that_is_a_symlink_resolves_inside_itself(tmp_path: Path) -> None:
    real = tmp_path / "real" / EXP
    checkpoint(real, A)
    (tmp_path / "link").mkdir()
    os.symlink(real, tmp_path / "link" / EXP)
    assert delete_checkpoints(command(tmp_path / "link" / EXP, A)) == [A]
    assert not (real / A).exists()


@pytest.mark.parametrize(
    ("root", "match"),
    [
        ("relative/" + EXP, "must be an absolute path"),
        ("/", "must be the experiment's own root"),
        ("/home", "must be the experiment's own root"),
        ("/srv/checkpoints/exp-other", "must be the experiment's own root"),
    ],
)
def test_refused_roots_delete_nothing(root: str, match: str) -> None:
    with pytest.raises(CheckpointGCRefusedError, match=match):
        delete_checkpoints(command(root, A))


def test_traversal_in_the_root_is_refused_outside_the_allowed_storage(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    outside = tmp_path / "elsewhere" / EXP
    victim = checkpoint(outside, A)
    sneaky = storage / ".." / "elsewhere" / EXP
    with pytest.raises(CheckpointGCRefusedError, match="outside this worker's checkpoint storage"):
        delete_checkpoints(command(sneaky, A), allowed_root=storage)
    assert victim.is_dir()
    inside = checkpoint(storage / EXP, A)
    assert delete_checkpoints(command(storage / EXP, A), allowed_root=storage) == [A]
    assert not inside.exists()


def test_uuids_are_checked_by_the_schema_and_again_here(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pattern"):
        command(tmp_path / EXP, "../../etc")
    forged = DeleteCheckpoints.model_construct(
        experiment_id=EXP, checkpoint_root=str(tmp_path / EXP), uuids=["../x"]
    )
    with pytest.raises(CheckpointGCRefusedError, match="canonical lowercase uuids"):
        delete_checkpoints(forged)


@pytest.mark.parametrize("experiment_id", ["data", "exp-0123ABCD", "exp-0123abc", "exp-0123abcd0"])
def test_only_a_searcher_experiment_id_is_cleaned(tmp_path: Path, experiment_id: str) -> None:
    root = tmp_path / experiment_id
    checkpoint(root, A)
    with pytest.raises(CheckpointGCRefusedError, match="must be a searcher's experiment id"):
        delete_checkpoints(command(root, A, experiment_id=experiment_id))
    assert (root / A).is_dir()
