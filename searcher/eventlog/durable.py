"""Files beside the log that are replaced whole: written, fsync'd, renamed, then the
directory fsync'd, so that after a crash the old or the new content is there, never a
mix."""

from __future__ import annotations

import os
from pathlib import Path

from rung.broker.contexts import fsync_directory

__all__ = ["fsync_directory", "replace_durably"]


def replace_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    fsync_directory(path.parent)
