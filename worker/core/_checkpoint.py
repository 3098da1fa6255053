"""``core_context.checkpoint``: checkpoints on a shared file system, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["CheckpointContext"]

METADATA_FILE = "metadata.json"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointContext:
    """Checkpoints live in ``root/<storage_id>/``; a temporary directory is renamed into place.

    ``report`` is called with ``(storage_id, steps_completed, metadata, size_bytes)`` after
    the checkpoint is complete on disk; on a worker it becomes a ``checkpoint_saved`` event.
    """

    def __init__(
        self, root: str | Path, report: Callable[[str, int, dict[str, Any], int], None]
    ) -> None:
        self.root = Path(root)
        self._report = report

    def _commit(self, tmp: Path, storage_id: str, metadata: dict[str, Any]) -> None:
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, sort_keys=True))
        final = self.root / storage_id
        os.rename(tmp, final)
        _fsync_dir(self.root)
        self._report(storage_id, int(metadata["steps_completed"]), metadata, _size(final))

    @staticmethod
    def _checked(metadata: dict[str, Any] | None) -> dict[str, Any]:
        metadata = dict(metadata or {})
        if "steps_completed" not in metadata:
            raise ValueError(
                "checkpoint metadata must contain 'steps_completed' (how far the "
                "trial had trained), e.g. {'steps_completed': batch}"
            )
        json.dumps(metadata)
        return metadata

    @contextlib.contextmanager
    def store_path(
        self, metadata: dict[str, Any] | None = None, *, shard: bool = False
    ) -> Iterator[tuple[Path, str]]:
        """Yield ``(path, storage_id)``; write the checkpoint into ``path``."""
        checked = self._checked(metadata)
        storage_id = str(uuid.uuid4())
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{storage_id}"
        tmp.mkdir()
        try:
            yield tmp, storage_id
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._commit(tmp, storage_id, checked)

    @contextlib.contextmanager
    def restore_path(self, storage_id: str, **_: Any) -> Iterator[Path]:
        path = self.root / storage_id
        if not (path / METADATA_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {storage_id} not found under {self.root}")
        yield path

    def upload(
        self,
        ckpt_dir: str | Path,
        metadata: dict[str, Any] | None = None,
        *,
        shard: bool = False,
        selector: Any = None,
    ) -> str:
        with self.store_path(metadata) as (path, storage_id):
            shutil.copytree(ckpt_dir, path, dirs_exist_ok=True)
        return storage_id

    def download(self, storage_id: str, ckpt_dir: str | Path, **_: Any) -> None:
        with self.restore_path(storage_id) as path:
            shutil.copytree(path, ckpt_dir, dirs_exist_ok=True)

    def get_metadata(self, storage_id: str) -> dict[str, Any]:
        with self.restore_path(storage_id) as path:
            data: dict[str, Any] = json.loads((path / METADATA_FILE).read_text())
            return data

    def delete(self, storage_id: str) -> None:
        shutil.rmtree(self.root / storage_id, ignore_errors=True)
