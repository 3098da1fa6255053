"""A warm start's source checkpoint lives under the experiment that saved it: the worker
tells the trial that root (``source_root``), and ``restore_path`` reads the source from
there, never from anywhere else under it, while the trial saves under its own root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rung as det
from rung.broker.schemas import RunTrial
from rung.worker.core._checkpoint import CheckpointContext
from rung.worker.core._info import INFO_ENV
from rung.worker.trial_run import TrialRun

SOURCE = "22222222-2222-4222-8222-222222222222"


def _saved(root: Path, storage_id: str, steps: int) -> None:
    path = root / storage_id
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"steps_completed": steps}))
    (path / "weights").write_text(f"saved at {steps}")


def _context(own: Path, source: Path | None) -> CheckpointContext:
    return CheckpointContext(own, lambda *_: None, source_root=source)


def test_the_source_is_read_from_the_source_root(tmp_path: Path) -> None:
    own, source = tmp_path / "exp-2", tmp_path / "exp-1"
    _saved(source, SOURCE, 7)
    context = _context(own, source)
    with context.restore_path(SOURCE) as path:
        assert path == source / SOURCE
        assert (path / "weights").read_text() == "saved at 7"
    assert context.get_metadata(SOURCE) == {"steps_completed": 7}
    context.download(SOURCE, tmp_path / "copy")
    assert (tmp_path / "copy" / "weights").read_text() == "saved at 7"
    # Its own checkpoints are saved (and deleted) under its own root only.
    with context.store_path({"steps_completed": 9}) as (path, storage_id):
        (path / "weights").write_text("new")
    assert (own / storage_id / "weights").is_file()
    context.delete(SOURCE)
    assert (source / SOURCE).is_dir()
    # Without a source root, the source is not found (the behaviour before source roots).
    with pytest.raises(FileNotFoundError, match=f"checkpoint {SOURCE} not found under"):
        _context(own, None).restore_path(SOURCE).__enter__()


def test_a_checkpoint_under_the_trials_own_root_comes_first(tmp_path: Path) -> None:
    own, source = tmp_path / "exp-2", tmp_path / "exp-1"
    _saved(source, SOURCE, 7)
    _saved(own, SOURCE, 8)
    with _context(own, source).restore_path(SOURCE) as path:
        assert path == own / SOURCE


@pytest.mark.parametrize("storage_id", ["../exp-3/" + SOURCE, "..", "nested/" + SOURCE, ""])
def test_nothing_but_a_uuid_directly_under_the_source_root_is_read(
    tmp_path: Path, storage_id: str
) -> None:
    own, source = tmp_path / "exp-2", tmp_path / "roots" / "exp-1"
    _saved(tmp_path / "roots" / "exp-3", SOURCE, 1)
    _saved(source / "nested", SOURCE, 1)
    source.mkdir(parents=True, exist_ok=True)
    with pytest.raises(FileNotFoundError, match="nor under the warm start's source root"):
        _context(own, source).restore_path(storage_id).__enter__()


def test_a_link_out_of_the_source_root_is_not_followed(tmp_path: Path) -> None:
    own, source, elsewhere = tmp_path / "exp-2", tmp_path / "exp-1", tmp_path / "secret"
    _saved(elsewhere, SOURCE, 1)
    source.mkdir()
    (source / SOURCE).symlink_to(elsewhere / SOURCE)
    with pytest.raises(FileNotFoundError, match="nor under the warm start's source root"):
        _context(own, source).restore_path(SOURCE).__enter__()


def _run_trial(source_root: str | None) -> RunTrial:
    return RunTrial(
        experiment_id="exp-2",
        trial_id=1,
        request_id="r",
        attempt=1,
        length=9,
        hparams={},
        trial_seed=7,
        latest_checkpoint=SOURCE,
        context_hash="0" * 64,
        entrypoint=["python3 train.py"],
        slots=0,
        checkpoint_root="/ckpt/exp-2",
        max_restarts=0,
        source_root=source_root,
    )


async def _never() -> float | None:
    return None


async def _emit(*_: object, **__: object) -> str:
    return "m"


@pytest.mark.parametrize("source_root", ["/ckpt/exp-1", None])
def test_the_trial_is_told_the_source_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source_root: str | None
) -> None:
    run = TrialRun(
        _run_trial(source_root),
        worker_id="w",
        run_dir=tmp_path,
        gpus=[],
        slot_ids=[0],
        emit=_emit,
        best_validation=_never,
    )
    env = run._environment()
    assert json.loads(env[INFO_ENV])["source_root"] == source_root
    monkeypatch.setenv(INFO_ENV, env[INFO_ENV])
    info = det.get_cluster_info()
    assert info is not None
    assert (info.checkpoint_root, info.source_root) == ("/ckpt/exp-2", source_root)
