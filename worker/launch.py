"""Start a training process that dies with its worker.

The worker runs ``python -m rung.worker.launch PARENT_PID ARGV...``: on Linux this asks the
kernel to SIGKILL the process when its parent dies (``PR_SET_PDEATHSIG``), then execs
the training command, which keeps the setting. So when a worker is killed outright
(SIGKILL, out of memory), its training processes do not live on holding GPUs and
writing checkpoints nobody will report. A worker that stops normally stops its trials
itself; this covers the case where it gets no chance to.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent", "main"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the parent dies; exit at once if ``parent`` is gone already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            sys.stderr.write(f"rung: cannot tie the process to its parent: {os.strerror(errno)}\n")
    if os.getppid() != parent:  # the parent died before the setting took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m rung.worker.launch PARENT_PID COMMAND [ARG...]\n")
        raise SystemExit(2)
    parent, command = int(argv[0]), argv[1:]
    die_with_parent(parent)
    os.execvp(command[0], command)  # noqa: S606 (the entrypoint, as the config gives it)


if __name__ == "__main__":
    main(sys.argv[1:])
