"""The digits example: real training through real workers (on the CPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    records = [json.loads(line) for line in Path(summary["event_log"]).read_text().splitlines()]
    lines = [
        line["text"]
        for r in records
        if r.get("input") and r["input"]["type"] == "log_lines"
        for line in r["input"]["lines"]
    ]
    assert any("device: cpu" in line for line in lines)
