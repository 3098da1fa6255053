"""``rung run --dashboard``: a local run serves its dashboard, and prints where."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_dashboard_browser import GATED, config

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = re.compile(r"dashboard: (http://127\.0\.0\.1:\d+/)\?key=([\w-]+)")


def fetch(url: str, key: str) -> str:
    with urllib.request.urlopen(f"{url}?key={key}", timeout=10) as response:  # noqa: S310
        body: bytes = response.read()
        return body.decode()


def prepare(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The gated experiment's gate folder, context and config file."""
    gates = tmp_path / "gates"
    gates.mkdir()
    context = tmp_path / "context"
    context.mkdir()
    (context / "gated.py").write_text(GATED)
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(config(gates)))
    return gates, context, config_file


def test_rung_run_serves_the_dashboard_of_its_run(tmp_path: Path) -> None:
    gates, context, config_file = prepare(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rung",
            "run",
            str(config_file),
            str(context),
            "--workers",
            "2",
            "--state-dir",
            str(tmp_path / "state"),
            "--dashboard",
            "--dashboard-port",
            "0",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "RUNG_BROKER_URL"},
        cwd=ROOT,
    )
    assert process.stderr is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            lines.append(raw.decode(errors="replace"))
            if ADDRESS.search(lines[-1]):
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "".join(lines)
        match = next(m for line in lines if (m := ADDRESS.search(line)))
        base, key = match.group(1), match.group(2)
        with pytest.raises(urllib.error.HTTPError, match="403"):
            fetch(base, "not-the-key")
        deadline = time.monotonic() + 60
        listing = fetch(base, key)
        while "data-experiment=" not in listing:
            assert time.monotonic() < deadline, listing[-2000:]
            time.sleep(0.1)
            listing = fetch(base, key)
        experiment_id = re.search(r'tr class="experiment" data-experiment="([^"]+)"', listing)
        assert experiment_id is not None
        page = fetch(f"{base}experiments/{experiment_id.group(1)}", key)
        assert "<h1>gated" in page
        assert 'data-action="kill"' in page  # a local run: its user may control it
        api = json.loads(fetch(f"{base}api/experiments/{experiment_id.group(1)}", key))
        assert api["state"] == "ACTIVE"
        for trial in (1, 2):
            for step in (1, 2):
                (gates / f"go-{trial}-{step}").touch()
        assert process.stdout is not None
        out = process.stdout.read()  # stderr is the reader thread's
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == 0, "".join(lines)
    assert json.loads(out)["state"] == "COMPLETED"
