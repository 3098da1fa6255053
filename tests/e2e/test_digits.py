"""The digits example: real training through real workers (on the CPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rung.searcher.eventlog import TRIAL_LOG_FILE, TrialLogStore

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"

pytest.importorskip("torch", reason="install the examples extra: pip install -e '.[examples]'")


def test_digits_search_trains_and_finds_a_good_model(tmp_path: Path) -> None:
    config = tmp_path / "digits.yaml"
    config.write_text(
        (DIGITS / "digits.yaml")
        .read_text()
        .replace("max_length: {epochs: 27}", "max_length: {epochs: 9}")
        .replace("max_trials: 16", "max_trials: 6")
        + "reproducibility: {experiment_seed: 1}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RUNG_BROKER_URL"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rung",
            "run",
            str(config),
            str(DIGITS),
            "--workers",
            "2",
            "--gpus",
            "none",
            "--state-dir",
            str(tmp_path / "state"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 6
    best = summary["best_trial"]
    assert best["length"] == 9
    assert best["metric"] < 0.2  # chance is 0.9; a working MLP is far below
    # What the trials wrote is kept apart from the event log, beside it.
    store = TrialLogStore(Path(summary["event_log"]).with_name(TRIAL_LOG_FILE))
    lines = [str(line["text"]) for line in store.read(limit=10_000, max_bytes=1 << 30).lines]
    assert any("device: cpu" in line for line in lines)
