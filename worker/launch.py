"""Start a training process that dies with its worker.

The worker runs ``python -m worker.launch PARENT_PID ARGV...``: on Linux this asks the
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

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        sys.stderr.write(f"rung: cannot tie the trial to its worker: {os.strerror(errno)}\n")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.stderr.write("usage: python -m worker.launch PARENT_PID COMMAND [ARG...]\n")
        raise SystemExit(2)
    parent, command = int(argv[0]), argv[1:]
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the setting took effect
        raise SystemExit(1)
    os.execvp(command[0], command)  # noqa: S606 (the entrypoint, as the config gives it)


if __name__ == "__main__":
    main(sys.argv[1:])
