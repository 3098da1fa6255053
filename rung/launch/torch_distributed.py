"""``python -m rung.launch.torch_distributed [options] -- CMD ...``: one process per slot
of the trial, with torchrun's environment, each one's lines tagged with its rank.

Each process gets what torchrun gives a static job: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``ROLE_RANK``,
``ROLE_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, so
``torch.distributed.init_process_group()`` (``env://``) and
``det.core.DistributedContext.from_torch_distributed()`` work unchanged. The defaults
come from the trial (``det.get_cluster_info()``): the processes per machine are its
slots, the machines its ``container_addrs``, the master the first of them, the port
the one the worker chose for the trial (else 29400 moved by ``RUNG_DIST_PORT_OFFSET``):
two trials on one machine keep apart. Options,
as torchrun spells them: ``--nproc_per_node``, ``--nnodes``, ``--node_rank``,
``--master_addr``, ``--master_port``.

Why not torchrun itself: it starts every rank in a session of its own, outside the
trial's process group, where the worker can neither tell the rank's connection to the
Core API from a stranger's nor kill it with the trial. Here every rank stays in the
trial's group. When one exits with an error, the others are stopped (SIGTERM, then
SIGKILL after 10 s) and its exit code is the trial's; a signal to the launcher goes to
every rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import rung

__all__ = ["main", "plan"]

USAGE = "usage: python -m rung.launch.torch_distributed [options] -- CMD [ARGS...]"
_PORT = 29400
_GRACE_S = 10.0
_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")


def plan(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The options (with the trial's defaults) and the command; ``SystemExit`` with what
    is wrong otherwise."""
    if "--" not in argv:
        raise SystemExit(f"{USAGE}\n(no -- before the command)")
    split = list(argv).index("--")
    given, script = list(argv[:split]), list(argv[split + 1 :])
    if not script:
        raise SystemExit(f"{USAGE}\n(no command after --)")
    info = rung.get_cluster_info()
    addrs = info.container_addrs if info is not None else ["127.0.0.1"]
    offset = int(os.environ.get("RUNG_DIST_PORT_OFFSET", "0") or 0)
    chosen = os.environ.get("RUNG_DIST_MASTER_PORT", "")  # the worker's pick
    options = {
        "nproc_per_node": str(len(info.slot_ids) if info is not None and info.slot_ids else 1),
        "nnodes": str(len(addrs)),
        "node_rank": str(info.container_rank if info is not None else 0),
        "master_addr": addrs[0],
        "master_port": chosen if chosen.isdigit() else str(_PORT + offset),
    }
    items = iter(given)
    for item in items:
        name, _, value = item.removeprefix("--").partition("=")
        name = name.replace("-", "_")  # torchrun takes both spellings of a name
        if name not in _OPTIONS or not item.startswith("--"):
            raise SystemExit(
                f"{item!r} is not an option of rung.launch.torch_distributed; it takes "
                + ", ".join(f"--{o}" for o in _OPTIONS)
            )
        options[name] = value or next(items, "")
        if not options[name]:
            raise SystemExit(f"--{name} needs a value")
    for name in ("nproc_per_node", "nnodes", "node_rank", "master_port"):
        if not options[name].isdigit():
            raise SystemExit(f"--{name} must be a whole number, not {options[name]!r}")
    if script[0] in ("python", "python3"):
        script = [sys.executable, *script[1:]]  # the trial's own Python
    return options, script


def _environment(options: dict[str, str], local_rank: int) -> dict[str, str]:
    per_node, nodes = int(options["nproc_per_node"]), int(options["nnodes"])
    rank = int(options["node_rank"]) * per_node + local_rank
    world = str(per_node * nodes)
    return {
        **os.environ,
        "RANK": str(rank),
        "WORLD_SIZE": world,
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_node),
        "GROUP_RANK": options["node_rank"],
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": world,
        "MASTER_ADDR": options["master_addr"],
        "MASTER_PORT": options["master_port"],
    }


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + _GRACE_S
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    options, script = plan(sys.argv[1:] if argv is None else argv)
    children = [
        subprocess.Popen(  # noqa: S603 (the user's command, one per rank)
            [sys.executable, "-m", "rung.launch.wrap_rank", "RANK", "--", *script],
            env=_environment(options, local_rank),
        )
        for local_rank in range(int(options["nproc_per_node"]))
    ]

    def forward(number: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(number)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, forward)
    code = 0
    running = list(children)
    while running:
        time.sleep(0.05)
        for child in [c for c in running if c.poll() is not None]:
            running.remove(child)
            if child.returncode != 0 and code == 0:
                code = child.returncode if child.returncode > 0 else 128 - child.returncode
                _stop(running)
    return code


if __name__ == "__main__":
    sys.exit(main())
