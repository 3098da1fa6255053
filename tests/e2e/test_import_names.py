"""A training script with its own ``worker.py``, ``broker.py`` and ``searcher.py`` beside it
runs on a real cluster, with both start methods, and imports its own modules.

Rung used to install ``broker``, ``searcher`` and ``worker`` as top-level packages: such a
script failed at ``import rung as det`` ("'worker' is not a package"), and in fork-server
mode its ``import worker`` silently got Rung's module, already loaded in the server. Now
Rung's only import name is ``rung``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Cluster

pytestmark = pytest.mark.rabbitmq

USER_MODULES = ("broker", "searcher", "worker")

TRAIN = """
import json
import sys
from pathlib import Path

# What the process held before the script imported anything: in fork-server mode, the
# server's modules (Rung's Core API among them); in exec mode, a fresh interpreter's.
PRELOADED = {name: name in sys.modules for name in ("rung", "broker", "searcher", "worker")}

import rung as det

import broker
import searcher
import worker

MODULES = {m.__name__: m for m in (broker, searcher, worker)}


def main() -> int:
    info = det.get_cluster_info()
    found = {
        name: {
            "marker": getattr(module, "MARKER", None),
            "file": module.__file__,
            "source": Path(module.__file__).read_text(),
        }
        for name, module in MODULES.items()
    }
    ours = all(entry["marker"] == f"user's {name}" for name, entry in found.items())
    record = {"preloaded": PRELOADED, "rung": det.__file__, "found": found, "ours": ours}
    out = Path(info.trial.hparams["out_dir"]) / f"trial-{info.trial.trial_id}.json"
    out.write_text(json.dumps(record))
    if not ours:
        print(f"imported the wrong modules: {found}", file=sys.stderr)
        return 3
    with det.core.init() as core_context:
        for op in core_context.searcher.operations():
            core_context.train.report_validation_metrics(op.length, {"user_modules": 3.0})
            op.report_completed(float(len(MODULES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
"""


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    for name in USER_MODULES:
        (context / f"{name}.py").write_text(f'MARKER = "user\'s {name}"\n')
    (context / "train.py").write_text(textwrap.dedent(TRAIN))
    return context


@pytest.mark.parametrize("start_method", ["fork-server", "exec"])
def test_a_script_imports_its_own_worker_broker_and_searcher_modules(
    cluster: Cluster, tmp_path: Path, start_method: str
) -> None:
    context = _context(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "import_names.yaml"
    config.write_text(
        "name: import-names\n"
        "entrypoint: python3 train.py\n"
        f"hyperparameters: {{out_dir: {json.dumps(str(out))}}}\n"
        "searcher: {name: single, metric: user_modules, max_length: 1, "
        "smaller_is_better: false}\n"
        "max_restarts: 0\n"
    )
    cluster.start_worker("w1", 1, "--start-method", start_method)
    result = cluster.create(config, context)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED", summary
    [trial] = summary["trials"]
    assert (trial["state"], trial["length"], trial["metric"]) == ("COMPLETED", 1, 3.0)

    record = json.loads((out / f"trial-{trial['trial_id']}.json").read_text())
    # The start method really was the one asked for: only the fork server preloads rung.
    assert record["preloaded"] == {
        "rung": start_method == "fork-server",
        "broker": False,
        "searcher": False,
        "worker": False,
    }
    assert Path(record["rung"]).resolve() == ROOT / "rung" / "__init__.py"
    assert record["ours"] is True
    for name in USER_MODULES:
        found = record["found"][name]
        assert found["marker"] == f"user's {name}"
        # The copy of the context the trial ran in (removed since, with its run
        # directory), not Rung's package in the checkout.
        file = Path(found["file"]).resolve()
        assert file.name == f"{name}.py"
        assert found["source"] == f'MARKER = "user\'s {name}"\n'
        assert not file.is_relative_to(ROOT)
        assert "runs" in file.parts
