"""A trial's run directory is removed once its process has ended, whatever the script
left in it: a directory closed to its owner, one it may not write into, symlinks out of
it (never followed: what they point at stays)."""

from __future__ import annotations

import json
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


async def test_a_run_directory_is_used_again_only_as_it_was_copied(tmp_path: Path) -> None:
    """Issue 18: a directory its process left unchanged serves a later process of the
    same experiment (rung.worker.pristine); one a script wrote into never does. Trial 1
    leaves a file behind: no trial finds it, and some trial runs from the very copy of
    its script an earlier one ran from (same inode and change time), although each
    imports a module of its own folder: from the bytecode the worker compiled as it
    copied the context (rung.worker.bytecode), and writing nothing."""
    out = tmp_path / "out"
    out.mkdir()
    trials = 6
    config = {
        "name": "kept-cwd",
        "entrypoint": f"python3 kept_cwd.py {out}",
        "searcher": {
            "name": "random",
            "metric": "loss",
            "max_length": 1,
            "max_trials": trials,
            "max_concurrent_trials": 1,
        },
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "max_restarts": 0,
    }
    async with rung.Client.local(tmp_path / "state", workers=1) as client:
        experiment = await client.create_experiment(config, SCRIPTS)
        assert await experiment.wait(timeout=120) == "COMPLETED"
    records = [json.loads((out / f"{n}.json").read_text()) for n in range(1, trials + 1)]
    assert all(r["helper"] == "kept helper" and r["compiled"] for r in records)
    assert all("left-behind.txt" not in r["listing"] for r in records)
    assert all("__pycache__" in r["listing"] for r in records)  # the worker's compilation
    assert all(r["listing"] == records[0]["listing"] for r in records)  # the context
    copies = [tuple(r["file"]) for r in records]
    assert len(set(copies)) < trials, copies
    assert copies[0] not in copies[1:]  # trial 1's, written into, was never used again
