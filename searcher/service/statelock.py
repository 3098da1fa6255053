"""One live searcher per state directory."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from rung.searcher.errors import SearcherError

__all__ = ["StateDirectoryBusyError", "StateLock"]


class StateDirectoryBusyError(SearcherError):
    """Another live searcher owns this state directory."""


class StateLock:
    """An exclusive lock on the state directory, held for the searcher's lifetime.

    It dies with its process (``kill -9`` included), so a restarted searcher can take over
    at once, while a second live searcher cannot act on the same experiments.
    """

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "searcher.lock"
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise StateDirectoryBusyError(
                f"state directory {state_dir} is in use by a live searcher ({holder}); "
                "run one searcher per state directory, or give this one --state-dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
