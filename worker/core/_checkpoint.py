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

from rung.broker.limits import MAX_CHECKPOINT_METADATA_BYTES, is_uuid
from rung.worker.core._sharded import Collectives, store_sharded
from rung.worker.core._validate import check_finite, check_json

__all__ = ["CheckpointContext", "CheckpointStorageError"]

METADATA_FILE = "metadata.json"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStorageError(OSError):
    """A checkpoint could not be written: the path and the OS error say why."""


def _fsync_tree(path: Path) -> None:
    """Every file and directory of the checkpoint on disk, before it is renamed into place."""
    for item in sorted(path.rglob("*"), reverse=True):
        if item.is_file():
            with item.open("rb") as handle:
                os.fsync(handle.fileno())
        elif item.is_dir():
            _fsync_dir(item)
    _fsync_dir(path)


class CheckpointContext:
    """Checkpoints live in ``root/<storage_id>/``; a temporary directory is renamed into place.

    ``report`` is called with ``(storage_id, steps_completed, metadata, size_bytes)`` after
    the checkpoint is complete on disk; on a worker it becomes a ``checkpoint_saved`` event.

    ``source_root`` is the root of the experiment that saved a warm start's source
    checkpoint (``searcher.source_checkpoint_uuid``): a checkpoint that is not under
    ``root`` is read from ``source_root/<uuid>``, never from elsewhere under it, and never
    written or deleted there.
    """

    def __init__(
        self,
        root: str | Path,
        report: Callable[[str, int, dict[str, Any], int], None],
        *,
        source_root: str | Path | None = None,
        distributed: Collectives | None = None,
    ) -> None:
        self.root = Path(root)
        self.source_root = Path(source_root) if source_root is not None else None
        self._report = report
        # The trial's ranks, when it has several: who may save, and how a part is sent.
        self._distributed = distributed

    def _commit(self, tmp: Path, storage_id: str, metadata: dict[str, Any]) -> None:
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, sort_keys=True))
        _fsync_tree(tmp)
        final = self.root / storage_id
        os.rename(tmp, final)
        _fsync_dir(self.root)
        # (Everything that could refuse it was checked before the rename: a report that
        # fails now may have reached the searcher, so the checkpoint stays.)
        self._report(storage_id, metadata["steps_completed"], metadata, _size(final))

    @staticmethod
    def _checked(metadata: dict[str, Any] | None) -> dict[str, Any]:
        metadata = dict(metadata or {})
        if "steps_completed" not in metadata:
            raise ValueError(
                "checkpoint metadata must contain 'steps_completed' (how far the "
                "trial had trained), e.g. {'steps_completed': batch}"
            )
        steps = metadata["steps_completed"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(
                f"checkpoint metadata's 'steps_completed' is {steps!r}; it must be a whole "
                "number of at least 0 (how far the trial had trained), e.g. batch"
            )
        check_json(
            "checkpoint metadata",
            metadata,
            MAX_CHECKPOINT_METADATA_BYTES,
            "MAX_CHECKPOINT_METADATA_BYTES",
        )
        check_finite("checkpoint metadata", metadata)
        return metadata

    @contextlib.contextmanager
    def store_path(
        self, metadata: dict[str, Any] | None = None, *, shard: bool = False
    ) -> Iterator[tuple[Path, str]]:
        """Yield ``(path, storage_id)``; write the checkpoint into ``path``. In a trial
        of several ranks only the chief saves with ``shard=False`` (Determined's rule);
        with ``shard=True`` every rank calls it and writes its own files, which become
        one checkpoint (:mod:`rung.worker.core._sharded`)."""
        if shard and self._distributed is not None and self._distributed.get_size() > 1:
            with store_sharded(
                self.root,
                self._distributed,
                metadata,
                checked=self._checked,
                commit=self._commit,
                fsync_tree=_fsync_tree,
            ) as pair:
                yield pair
            return
        if self._distributed is not None and self._distributed.get_rank() != 0:
            raise RuntimeError(
                f"only the chief (rank 0) saves a checkpoint with shard=False; this is rank "
                f"{self._distributed.get_rank()}: save from rank 0 (if distributed.get_rank() "
                "== 0: ...), or save a part on every rank with shard=True"
            )
        checked = self._checked(metadata)
        storage_id = str(uuid.uuid4())
        tmp = self.root / f".tmp-{storage_id}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as exc:
            raise self._storage_error(storage_id, exc) from exc
        try:
            yield tmp, storage_id
            self._commit(tmp, storage_id, checked)
        except OSError as exc:
            # Nothing half-written stays, and nothing is reported as saved.
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._storage_error(storage_id, exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _storage_error(self, storage_id: str, exc: OSError) -> CheckpointStorageError:
        where = exc.filename or self.root
        return CheckpointStorageError(
            exc.errno,
            f"checkpoint {storage_id} was not saved: {where}: {exc.strerror or exc}; "
            f"check that the checkpoint storage ({self.root}) exists, is writable by the "
            "worker and has free space",
        )

    def _source_path(self, storage_id: str) -> Path | None:
        """``source_root/<storage_id>``, where that is a checkpoint directly under it."""
        if self.source_root is None or not is_uuid(storage_id):
            return None
        path = self.source_root / storage_id
        try:
            inside = path.resolve(strict=True).parent == self.source_root.resolve(strict=True)
        except OSError:
            return None
        return path if inside and (path / METADATA_FILE).is_file() else None

    @contextlib.contextmanager
    def restore_path(self, storage_id: str, **_: Any) -> Iterator[Path]:
        """The checkpoint's directory: under this trial's root, else (a warm start's
        source) under ``source_root``."""
        path = self.root / storage_id
        if not (path / METADATA_FILE).is_file():
            source = self._source_path(storage_id)
            if source is None:
                where = str(self.root)
                if self.source_root is not None:
                    where += f" nor under the warm start's source root {self.source_root}"
                raise FileNotFoundError(f"checkpoint {storage_id} not found under {where}")
            path = source
        yield path

    def upload(
        self,
        ckpt_dir: str | Path,
        metadata: dict[str, Any] | None = None,
        *,
        shard: bool = False,
        selector: Any = None,
    ) -> str:
        with self.store_path(metadata, shard=shard) as (path, storage_id):
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
