"""``python -m rung.launch.wrap_rank RANK -- CMD ...``: run CMD, tagging each line it
writes with ``[rank=N] ``, and exit with its exit code.

RANK is the rank, or the name of an environment variable that holds it (``RANK``, as
torchrun sets). Standard output and standard error keep apart; a signal this process
gets (SIGTERM, SIGINT) is passed to CMD. A line is tagged as a whole: a partial line
(a progress bar's) is written when CMD writes its end, or exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

__all__ = ["main", "parse"]

USAGE = "usage: python -m rung.launch.wrap_rank RANK -- CMD [ARGS...]"


def parse(argv: Sequence[str]) -> tuple[int, list[str]]:
    """The rank and the command, or ``SystemExit(2)`` with what is wrong."""
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv) or 'nothing'})")
    rank_text = argv[0]
    if not rank_text.isdigit():
        value = os.environ.get(rank_text)
        if value is None or not value.isdigit():
            raise SystemExit(
                f"RANK {rank_text!r} is neither a number nor the name of a variable that "
                f"holds one ({rank_text}={value!r}); pass the rank, or e.g. RANK under torchrun"
            )
        rank_text = value
    return int(rank_text), list(argv[2:])


def _tag(source: BinaryIO, target: BinaryIO, prefix: bytes) -> None:
    for line in iter(source.readline, b""):
        target.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        target.flush()


def main(argv: Sequence[str] | None = None) -> int:
    rank, command = parse(sys.argv[1:] if argv is None else argv)
    prefix = f"[rank={rank}] ".encode()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603 (the user's command)
    except OSError as exc:
        sys.stderr.write(f"[rank={rank}] cannot start {command[0]!r}: {exc}\n")
        return 127
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda sig, _frame: child.send_signal(sig))
    assert child.stdout is not None  # noqa: S101 (piped)
    assert child.stderr is not None  # noqa: S101
    copies = [
        threading.Thread(target=_tag, args=(child.stdout, sys.stdout.buffer, prefix)),
        threading.Thread(target=_tag, args=(child.stderr, sys.stderr.buffer, prefix)),
    ]
    for copy in copies:
        copy.start()
    code = child.wait()
    for copy in copies:
        copy.join()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
