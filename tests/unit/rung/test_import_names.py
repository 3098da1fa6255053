"""Rung has one import name, ``rung``: its ``broker``, ``searcher`` and ``worker`` packages
are ``rung.broker``, ``rung.searcher`` and ``rung.worker``, so a training script's own
``worker.py`` (or ``broker.py``, ``searcher.py``) is the one its ``import worker`` finds."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FORMER_NAMES = frozenset({"broker", "searcher", "worker"})

# Code that is not Rung's: users' training scripts and peers' benchmark scripts, which may
# have modules of their own with these names, and what tools and builds put in the tree.
EXCLUDED = (
    "bench/peer_scripts",
    "bench/contexts",
    "tests/faults/contexts",
    "build",
    "dist",
)

_INSTALLED = """
import importlib.metadata, importlib.util, json
distribution = importlib.metadata.distribution("rung")
names = sorted(
    name
    for name, owners in importlib.metadata.packages_distributions().items()
    if "rung" in owners
)
print(json.dumps({
    "top_level": (distribution.read_text("top_level.txt") or "").split(),
    "names": names,
    "found": [n for n in ("broker", "searcher", "worker") if importlib.util.find_spec(n)],
    "rung": [importlib.util.find_spec(f"rung.{n}") is not None
             for n in ("broker", "searcher", "worker")],
}))
"""


def test_the_installed_distribution_provides_only_the_rung_import_name(tmp_path: Path) -> None:
    # An isolated interpreter in an empty directory: it sees what is installed, not the
    # checkout (whose root holds the broker/, searcher/ and worker/ folders).
    result = subprocess.run(
        [sys.executable, "-I", "-c", _INSTALLED],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installed = json.loads(result.stdout)
    assert installed["top_level"] == ["rung"]
    assert installed["names"] == ["rung"]
    assert installed["found"] == []
    assert installed["rung"] == [True, True, True]


def _python_files() -> Iterator[Path]:
    excluded = {ROOT / p for p in EXCLUDED}
    for current, dirs, files in os.walk(ROOT):  # rung/broker etc. are links: not followed
        here = Path(current)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not d.endswith(".egg-info")
            and here / d not in excluded
        )
        yield from (here / f for f in sorted(files) if f.endswith(".py"))


def _imports_of_former_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORMER_NAMES:
                yield node.lineno, name


def test_no_module_imports_broker_searcher_or_worker_at_the_top_level() -> None:
    files = list(_python_files())
    scanned = {f.relative_to(ROOT).as_posix() for f in files}
    # The walk does reach Rung's own code (through the real folders, not the links).
    assert {"broker/archive.py", "searcher/trials/run.py", "worker/spawn.py"} <= scanned
    assert "rung/__init__.py" in scanned
    assert not any(name.startswith(EXCLUDED) for name in scanned)
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name} (use rung.{name})"
        for path in files
        for line, name in _imports_of_former_names(ast.parse(path.read_bytes(), str(path)))
    ]
    assert offenders == []


def test_the_scan_finds_each_form_of_import() -> None:
    source = """
import worker
import broker.rpc as rpc
from searcher.trials import ExperimentRun
from . import worker as relative
from rung.worker import spawn
import importlib
importlib.import_module("worker.spawn")
__import__("broker")
"""
    found = [name for _, name in _imports_of_former_names(ast.parse(source))]
    assert found == ["worker", "broker.rpc", "searcher.trials", "worker.spawn", "broker"]
