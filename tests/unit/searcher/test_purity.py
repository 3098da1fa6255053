"""The search core stays pure: no asyncio, no broker, no clock, no global randomness."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PURE = [
    ROOT / "searcher" / "config",
    ROOT / "searcher" / "methods",
    ROOT / "searcher" / "simulate",
    ROOT / "searcher" / "trials",
    ROOT / "searcher" / "samplers",
    *(
        ROOT / "searcher" / name
        for name in (
            "experiment.py",
            "events.py",
            "ops.py",
            "space.py",
            "rungs.py",
            "plan.py",
            "errors.py",
        )
    ),
]
BANNED_MODULES = {"asyncio", "aio_pika", "aiormq", "time", "datetime", "threading", "secrets"}


def pure_files() -> list[Path]:
    files: list[Path] = []
    for entry in PURE:
        files += sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]
    return files


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_no_io_clock_or_global_random(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "random":
                # Only the seedable generator class, never the module-level functions.
                assert [a.name for a in node.names] == ["Random"], ast.dump(node)
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in BANNED_MODULES, f"{path}: imports {name}"
            if isinstance(node, ast.Import):
                assert name != "random", f"{path}: use 'from random import Random' instead"


def test_importing_the_search_core_loads_no_broker_code() -> None:
    """The core (trial lifecycle included) shares the message schemas with the broker,
    and nothing else: no adapter, no aio-pika, no event loop, no logging framework."""
    code = (
        "import sys\n"
        "import rung.searcher.config, rung.searcher.methods, rung.searcher.experiment\n"
        "import rung.searcher.simulate, rung.searcher.plan, rung.searcher.space\n"
        "import rung.searcher.trials\n"
        "banned = ('aio_pika', 'aiormq', 'asyncio', 'structlog')\n"
        "adapters = ('rung.broker.port', 'rung.broker.rabbit', 'rung.broker.memory')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned or m in adapters)\n"
        "print(','.join(bad))\n"
    )
    assert _run_fresh(code) == ""


def test_the_search_core_names_asyncio_nowhere() -> None:
    for path in pure_files():
        assert "asyncio" not in path.read_text(), path


def test_samplers_use_only_seeded_numpy_generators() -> None:
    """numpy's module-level random functions share one global state: never used."""
    for path in sorted((ROOT / "searcher" / "samplers").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                inner = node.value
                if inner.attr == "random" and isinstance(inner.value, ast.Name):
                    assert node.attr in {"default_rng", "Generator"}, (
                        f"{path}: np.random.{node.attr}"
                    )


def test_loading_the_cli_and_the_search_core_imports_no_scipy() -> None:
    """scipy takes about a second to import: only a model-based sampler at work loads it,
    never a `rung` command's start nor a searcher that runs random search."""
    code = (
        "import sys\n"
        "import rung.cli.main, rung.searcher.experiment, rung.searcher.samplers\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy')[:3])\n"
    )
    assert _run_fresh(code) == "[]"


def _run_fresh(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (nothing imported before it)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()
