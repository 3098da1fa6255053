"""``python -m rung.launch.wrap_rank RANK -- CMD ...``: run CMD, tagging each line it
writes with ``[rank=N] ``, and exit with its exit code.

RANK is the rank, or the name of an environment variable that holds it (``RANK``, as
torchrun sets). Standard output and standard error keep apart; a signal this process
gets (SIGTERM, SIGINT) is passed to CMD. A line is tagged as a whole: a partial line
(a progress bar's) is written at each carriage return, and a line without an end is
passed on in 64 KiB pieces.

A worker takes the tag off each line it ships and keeps the rank as the line's ``rank``
(:func:`untag`): ``rung trial logs --rank N`` and the dashboard filter by it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

from rung.broker.limits import MAX_RANK

__all__ = ["as_rank", "main", "parse", "untag"]

USAGE = "usage: python -m rung.launch.wrap_rank RANK -- CMD [ARGS...]"
_LONGEST = 64 * 1024  # bytes of a line without an end, passed on as a piece
_TAG = re.compile(r"\[rank=([0-9]{1,4})\] ")
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() takes "²" too
_RANK = re.compile(r"[0-9]{1,4}")  # (MAX_RANK has four digits; a longer one is no rank)


def as_rank(text: str) -> int | None:
    """``text`` as a rank: ASCII digits, at most :data:`MAX_RANK`; else None."""
    return int(text) if _RANK.fullmatch(text) and int(text) <= MAX_RANK else None


def untag(text: str) -> tuple[int | None, str]:
    """The rank a line is tagged with, and the line without its tag; (None, text) for a
    line without one."""
    match = _TAG.match(text)
    return (int(match[1]), text[match.end() :]) if match else (None, text)


def parse(argv: Sequence[str]) -> tuple[int, list[str]]:
    """The rank and the command, or ``SystemExit(2)`` with what is wrong."""
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv) or 'nothing'})")
    rank_text = argv[0]
    if not _NUMBER.fullmatch(rank_text):
        value = os.environ.get(rank_text)
        if value is None or not _NUMBER.fullmatch(value):
            raise SystemExit(
                f"RANK {rank_text!r} is neither a number nor the name of a variable that "
                f"holds one ({rank_text}={value!r}); pass the rank, or e.g. RANK under torchrun"
            )
        rank_text = value
    if as_rank(rank_text) is None:
        raise SystemExit(f"RANK {rank_text} is above {MAX_RANK}, the highest rank a line carries")
    return int(rank_text), list(argv[2:])


def _tag(source: BinaryIO, target: BinaryIO, prefix: bytes) -> None:
    """Copy ``source`` to ``target``, each line tagged. A line ends at a newline or a
    carriage return (a progress bar redraws with those: each redraw is passed on as it
    comes), and a line longer than ``_LONGEST`` is passed on in pieces: a script's
    output never piles up here."""
    pending = b""
    while chunk := os.read(source.fileno(), 65536):
        pending += chunk
        while True:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            target.write(prefix + pending[: cut + 1])
            pending = pending[cut + 1 :]
        while len(pending) > _LONGEST:
            target.write(prefix + pending[:_LONGEST] + b"\n")
            pending = pending[_LONGEST:]
        target.flush()
    if pending:
        target.write(prefix + pending + b"\n")
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
