"""Sharded checkpoints: every rank writes its part, the chief makes them one checkpoint.

``store_path(metadata, shard=True)`` is a collective, as in Determined: every rank calls
it. The chief names the checkpoint and broadcasts the name; each rank writes into a
directory of its own beside the checkpoint root (``.tmp-<id>.rank<r>``), makes it durable
and tells the chief, in one gather, which files it wrote and its metadata. The chief
refuses two ranks writing one file and two ranks giving one metadata key different
values (naming the file or the key and the ranks), else moves every part into one
directory (a rename: the parts are on the same file system), writes the merged metadata,
renames it into place and reports it once. Every rank then learns the outcome in one
broadcast, so all of them return or all of them raise.

A rank whose ``with`` body raises still takes part in both collectives (with its error)
before it re-raises, so the other ranks raise too instead of waiting for it. The
checkpoint root must be a file system every rank sees, as for any Rung checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from rung.broker.limits import MAX_CHECKPOINT_METADATA_BYTES
from rung.worker.core._validate import check_json

__all__ = ["Collectives", "ShardedCheckpointError", "store_sharded"]

METADATA_FILE = "metadata.json"


class Collectives(Protocol):
    """What a sharded save needs of a ``DistributedContext``."""

    def get_rank(self) -> int: ...
    def get_size(self) -> int: ...
    def gather(self, stuff: Any) -> list[Any] | None: ...
    def broadcast(self, stuff: Any) -> Any: ...


class ShardedCheckpointError(RuntimeError):
    """The ranks' parts could not be made one checkpoint; the message says which rank,
    which file or which key, and the fix."""


def _part_files(part: Path) -> list[str]:
    """Every file (and link) under ``part``, relative to it, in a stable order."""
    files: list[str] = []
    for directory, dirs, names in os.walk(part):
        here = Path(directory)
        # A link to a directory is kept as a link, not walked.
        files.extend(str((here / n).relative_to(part)) for n in dirs if (here / n).is_symlink())
        files.extend(str((here / n).relative_to(part)) for n in names)
    return sorted(files)


def _merged_metadata(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    owner: dict[str, int] = {}
    for rank, part in enumerate(parts):
        for key, value in part["metadata"].items():
            if key in merged and merged[key] != value:
                raise ShardedCheckpointError(
                    f"sharded checkpoint metadata conflicts: {key!r} is {merged[key]!r} on "
                    f"rank {owner[key]} and {value!r} on rank {rank}; give a key from one "
                    "rank only, or the same value on every rank"
                )
            merged[key] = value
            owner.setdefault(key, rank)
    return merged


def _file_owners(parts: list[dict[str, Any]]) -> dict[str, int]:
    owners: dict[str, int] = {}
    for rank, part in enumerate(parts):
        for name in part["files"]:
            if name == METADATA_FILE:
                raise ShardedCheckpointError(
                    f"rank {rank} wrote {METADATA_FILE} into its part; Rung writes that file "
                    "from the metadata every rank passes to store_path: give it there"
                )
            if name in owners:
                raise ShardedCheckpointError(
                    f"ranks {owners[name]} and {rank} both wrote {name!r} into one sharded "
                    "checkpoint; each rank must write files of its own (put the rank in "
                    "their names, e.g. f'model-{rank}.pt')"
                )
            owners[name] = rank
    return owners


def _assemble(
    root: Path,
    storage_id: str,
    parts: list[dict[str, Any]],
    checked: Callable[[dict[str, Any] | None], dict[str, Any]],
    commit: Callable[[Path, str, dict[str, Any]], None],
) -> None:
    """On the chief: the ranks' parts as one checkpoint, committed (or an error)."""
    failed = [(rank, part["error"]) for rank, part in enumerate(parts) if part["error"]]
    if failed:
        rank, error = failed[0]
        raise ShardedCheckpointError(
            f"rank {rank} failed while writing its part of checkpoint {storage_id}: {error}; "
            "nothing was saved"
        )
    metadata = checked(_merged_metadata(parts))
    owners = _file_owners(parts)
    for rank in range(len(parts)):
        if not _part_dir(root, storage_id, rank).is_dir():
            raise ShardedCheckpointError(
                f"rank {rank}'s part of checkpoint {storage_id} is not under {root} as the "
                "chief sees it: the checkpoint storage must be one file system that every "
                "rank's machine mounts at the same path"
            )
    tmp = root / f".tmp-{storage_id}"
    tmp.mkdir()
    for name, rank in owners.items():
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(_part_dir(root, storage_id, rank) / name, target)
    commit(tmp, storage_id, metadata)


def _part_dir(root: Path, storage_id: str, rank: int) -> Path:
    return root / f".tmp-{storage_id}.rank{rank}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


@contextlib.contextmanager
def store_sharded(
    root: Path,
    dist: Collectives,
    metadata: dict[str, Any] | None,
    *,
    checked: Callable[[dict[str, Any] | None], dict[str, Any]],
    commit: Callable[[Path, str, dict[str, Any]], None],
    fsync_tree: Callable[[Path], None],
) -> Iterator[tuple[Path, str]]:
    """Yield ``(this rank's part, storage_id)``; see the module's docstring."""
    rank = dist.get_rank()
    storage_id = str(dist.broadcast(str(uuid.uuid4()) if rank == 0 else None))
    part = _part_dir(root, storage_id, rank)
    own: dict[str, Any] = dict(metadata or {})
    problem: str | None = None
    try:
        check_json(
            "checkpoint metadata",
            own,
            MAX_CHECKPOINT_METADATA_BYTES,
            "MAX_CHECKPOINT_METADATA_BYTES",
        )
        root.mkdir(parents=True, exist_ok=True)
        part.mkdir()
    except (OSError, ValueError, TypeError) as exc:
        problem = _describe(exc)
    starting = dist.gather(problem)
    verdict = dist.broadcast(
        _first_problem(starting, "could not start its part") if rank == 0 else None
    )
    if verdict is not None:
        shutil.rmtree(part, ignore_errors=True)
        raise ShardedCheckpointError(verdict)
    error: BaseException | None = None
    try:
        yield part, storage_id
        fsync_tree(part)
    except Exception as exc:  # noqa: BLE001  (the others must learn of it, not wait)
        error = exc
    files = _part_files(part) if error is None else []
    report = {"error": _describe(error) if error else None, "metadata": own, "files": files}
    gathered = dist.gather(report)
    outcome: str | None = None
    if gathered is not None:  # the chief: it has every rank's report
        try:
            _assemble(root, storage_id, gathered, checked, commit)
        except Exception as exc:  # noqa: BLE001  (every rank must learn it, whatever it was)
            outcome = (
                str(exc)
                if isinstance(exc, ShardedCheckpointError)
                else f"checkpoint {storage_id} was not saved: {_describe(exc)}"
            )
            shutil.rmtree(root / f".tmp-{storage_id}", ignore_errors=True)
    outcome = dist.broadcast(outcome)
    shutil.rmtree(part, ignore_errors=True)
    if error is not None:
        raise error
    if outcome is not None:
        raise ShardedCheckpointError(outcome)


def _first_problem(problems: list[Any] | None, what: str) -> str | None:
    for rank, problem in enumerate(problems or []):
        if problem:
            return f"rank {rank} {what}: {problem}; nothing was saved"
    return None
