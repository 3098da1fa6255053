"""Every Python example in docs/client.md runs as it is, against ``Client.local()``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _runnable() -> list[str]:
    """The examples that run on their own: those that use the local mode."""
    return [block for block in FENCE.findall(DOC.read_text()) if ".local(" in block]


def test_the_doc_has_examples() -> None:
    assert len(_runnable()) >= 4  # create/watch/wait, the AutoML loop, cancel, sync


@pytest.mark.parametrize("index", range(4))
def test_a_doc_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(_runnable()[index])
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"
