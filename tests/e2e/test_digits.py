"""The digits example: real training through real workers (on the CPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rung.searcher.eventlog import TRIAL_LOG_FILE, TrialLogStore

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"

pytest.importorskip("torch", reason="install the examples extra: pip install -e '.[examples]'")


def _run(tmp_path: Path, config: Path, *options: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RUNG_BROKER_URL"}
    common = ["--gpus", "none", "--state-dir", str(tmp_path / "state"), "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "rung", "run", str(config), str(DIGITS), *options, *common],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_digits_search_trains_and_finds_a_good_model(tmp_path: Path) -> None:
    config = tmp_path / "digits.yaml"
    config.write_text(
        (DIGITS / "digits.yaml")
        .read_text()
        .replace("max_length: {epochs: 27}", "max_length: {epochs: 9}")
        .replace("max_trials: 16", "max_trials: 6")
        + "reproducibility: {experiment_seed: 1}\n"
    )
    summary = _run(tmp_path, config, "--workers", "2")
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 6
    best = summary["best_trial"]
    assert best["length"] == 9
    assert best["metric"] < 0.2  # chance is 0.9; a working MLP is far below
    # What the trials wrote is kept apart from the event log, beside it.
    store = TrialLogStore(Path(summary["event_log"]).with_name(TRIAL_LOG_FILE))
    lines = [str(line["text"]) for line in store.read(limit=10_000, max_bytes=1 << 30).lines]
    assert any("device: cpu" in line for line in lines)


def test_digits_with_ddp_trains_each_trial_on_two_processes(tmp_path: Path) -> None:
    config = tmp_path / "digits_ddp.yaml"
    config.write_text(
        (DIGITS / "digits_ddp.yaml")
        .read_text()
        .replace("max_length: {epochs: 9}", "max_length: {epochs: 6}")
        .replace("max_trials: 4", "max_trials: 2")
        + "reproducibility: {experiment_seed: 1}\n"
    )
    summary = _run(tmp_path, config, "--workers", "1", "--slots", "2")
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 2
    best = summary["best_trial"]
    assert best["metric"] < 0.3  # chance is 0.9: the ranks trained one model together
    store = TrialLogStore(Path(summary["event_log"]).with_name(TRIAL_LOG_FILE))
    lines = store.read(trial_id=best["trial_id"], limit=10_000, max_bytes=1 << 30).lines
    devices = {
        line.get("rank"): str(line["text"]) for line in lines if "backend" in str(line["text"])
    }
    assert set(devices) == {0, 1}  # each process says where it runs, with its rank
    assert all("of 2: device cpu" in text and "backend gloo" in text for text in devices.values())
