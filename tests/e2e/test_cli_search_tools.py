"""``rung preview-search`` and ``rung simulate`` as a user runs them, in real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "examples" / "core_api" / "3_hpsearch.yaml"
MFH6 = ROOT / "examples" / "simulate" / "mfh6_asha.yaml"


def rung(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rung", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_preview_search_json_shows_the_bracket_plan() -> None:
    result = rung("preview-search", str(TUTORIAL), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(b["rungs"], b["trials"]) for b in plan["brackets"]] == [([25, 100], 7), ([100], 3)]
    assert plan["total_trials"] == 10
    assert plan["max_total_length"] == 775


def test_preview_search_prints_a_table() -> None:
    result = rung("preview-search", str(TUTORIAL))
    assert result.returncode == 0, result.stderr
    assert "adaptive_asha" in result.stdout
    assert "total trials: 10" in result.stdout


def test_simulate_json_has_the_documented_keys() -> None:
    result = rung(
        "simulate", str(MFH6), "--benchmark", "mfh6", "--workers", "8", "--seed", "4", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("best_metric", "best_hparams", "trials", "total_length", "sim_time", "utilization"):
        assert key in summary
    assert summary["trials"] == 300
    assert summary["seed"] == 4
    again = json.loads(
        rung(
            "simulate", str(MFH6), "--benchmark", "mfh6", "--workers", "8", "--seed", "4", "--json"
        ).stdout
    )
    assert again == summary


def test_simulate_with_curves(tmp_path: Path) -> None:
    curves = tmp_path / "curves.jsonl"
    curves.write_text(
        "\n".join(
            json.dumps({"hparams": {"increment_by": k}, "curve": {"25": 25 * k, "100": 100 * k}})
            for k in range(1, 9)
        )
    )
    result = rung("simulate", str(TUTORIAL), "--curves", str(curves), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["trials"] == 10
    assert summary["best_metric"] == 100 * summary["best_hparams"]["increment_by"]


def test_invalid_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "searcher: {name: asha, metric: x, max_length: 10, max_trials: 4, "
        "num_rungs: 2, divisor: 1, divisr: 2}\n"
    )
    result = rung("preview-search", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "searcher.divisor: must be greater than 1, got 1" in result.stderr
    assert "did you mean 'divisor'?" in result.stderr


def test_unknown_determined_keys_warn_and_run(tmp_path: Path) -> None:
    config = tmp_path / "det.yaml"
    config.write_text(TUTORIAL.read_text() + "environment: {image: x}\nbind_mounts: []\n")
    result = rung("--log-format", "json", "preview-search", str(config), "--json")
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()]
    assert {w["level"] for w in warnings} == {"warning"}
    assert any(w["event"].startswith("environment:") for w in warnings)
    assert any(w["event"].startswith("bind_mounts:") for w in warnings)


def test_simulate_errors_exit_2(tmp_path: Path) -> None:
    result = rung("simulate", str(TUTORIAL), "--benchmark", "mfh6")
    assert result.returncode == 2
    assert "needs numeric hyperparameters x0..x5" in result.stderr
    missing = rung("simulate", str(TUTORIAL), "--curves", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
