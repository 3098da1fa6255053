"""The experiment's event log: JSON lines, each one written and fsync'd before anything it
caused is published or acknowledged. (Crash recovery and replay build on it next.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["EventLog"]

LOG_VERSION = 1


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self.seq = 0

    def append(self, kind: str, **fields: Any) -> int:
        self.seq += 1
        record = {"v": LOG_VERSION, "seq": self.seq, "kind": kind, **fields}
        self._file.write(json.dumps(record, sort_keys=True, default=str).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return self.seq

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        with path.open("rb") as handle:
            return [json.loads(line) for line in handle if line.strip()]
