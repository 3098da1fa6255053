"""A trial's run directory is removed once its process has ended, whatever the script
left in it: a directory closed to its owner, one it may not write into, symlinks out of
it (never followed: what they point at stays)."""

from __future__ import annotations

import os
from pathlib import Path

import rung
from tests.support import wait_for

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _trial_dirs(workers: Path) -> list[Path]:
    """The trial processes' directories under every local worker's run directories."""
    return [
        trial
        for session in workers.glob("*/runs/*")
        if session.is_dir()
        for experiment in session.iterdir()
        if experiment.is_dir()
        for trial in experiment.iterdir()
    ]


async def test_a_messy_run_directory_is_removed_and_its_symlinks_not_followed(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    precious = tmp_path / "precious-file.txt"
    precious.write_text("keep me too\n")
    config = {
        "name": "messy-cwd",
        "entrypoint": f"python3 messy_cwd.py {outside} {precious}",
        "searcher": {"name": "random", "metric": "loss", "max_length": 2, "max_trials": 3},
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "max_restarts": 0,
    }
    workers = tmp_path / "state" / "workers"
    async with rung.Client.local(tmp_path / "state", workers=2) as client:
        experiment = await client.create_experiment(config, SCRIPTS)
        assert await experiment.wait(timeout=120) == "COMPLETED"
        trials = await experiment.trials()
        assert [t.state for t in trials] == ["COMPLETED"] * 3
        # Removed while the workers still run: each once its process has ended.
        await wait_for(lambda: not _trial_dirs(workers), 30, "the run directories' removal")
        sessions = [s for s in workers.glob("*/runs/*") if s.is_dir()]
        assert len(sessions) == 2  # one per running worker, owned by this process
        assert {(s / "owner").read_text().strip() for s in sessions} == {str(os.getpid())}
    assert sorted(outside.iterdir()) == [outside / "precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert precious.read_text() == "keep me too\n"
    # The workers stopped: their sessions are gone, the context cache stays.
    assert [list((w / "runs").iterdir()) for w in sorted(workers.iterdir())] == [[], []]
    assert all(any((w / "contexts").iterdir()) for w in workers.iterdir())
