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
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from rung.broker.limits import MAX_CHECKPOINT_METADATA_BYTES
from rung.worker.core._validate import check_finite, check_json

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


def _same(value: Any) -> str:
    """A value as JSON writes it: True is not 1, and key order does not matter."""
    return json.dumps(value, sort_keys=True)


def _merged_metadata(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    owner: dict[str, int] = {}
    for rank, part in enumerate(parts):
        for key, value in part["metadata"].items():
            if key in merged and _same(merged[key]) != _same(value):
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
    # A file (or link) of one rank where another has a directory: the other's files
    # would go through it, wherever a link points.
    for name, rank in owners.items():
        for parent in PurePosixPath(name).parents:
            other = owners.get(str(parent))
            if other is not None:
                raise ShardedCheckpointError(
                    f"rank {other} wrote {str(parent)!r} as a file or link and rank {rank} "
                    f"wrote {name!r} under it; one name cannot be both: rename one"
                )
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
        if _part_dir(root, storage_id, rank).is_symlink():
            raise ShardedCheckpointError(
                f"rank {rank}'s part of checkpoint {storage_id} was replaced by a link; "
                "write files into the directory store_path gives, do not replace it"
            )
        if not _part_dir(root, storage_id, rank).is_dir():
            raise ShardedCheckpointError(
                f"rank {rank}'s part of checkpoint {storage_id} is not under {root} as the "
                "chief sees it: the checkpoint storage must be one file system that every "
                "rank's machine mounts at the same path"
            )
    tmp = root / f".tmp-{storage_id}"
    tmp.mkdir()
    inside = tmp.resolve()
    made: set[Path] = {tmp}  # the directories checked to be inside, then made
    for name, rank in owners.items():
        target = tmp / name
        if target.parent not in made:
            # The deepest part of the way that exists must be inside: a link moved in
            # before would take the rest of the way out. Checked before anything is made.
            existing = target.parent
            while not os.path.lexists(existing):
                existing = existing.parent
            if not existing.resolve().is_relative_to(inside):
                raise ShardedCheckpointError(
                    f"rank {rank}'s {name!r} would leave the checkpoint through a link: "
                    "write plain files and directories"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.rename(_part_dir(root, storage_id, rank) / name, target)
    commit(tmp, storage_id, metadata)


def _remove(path: Path) -> None:
    """Remove a part or a checkpoint being made, or the link that replaced it."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _part_dir(root: Path, storage_id: str, rank: int) -> Path:
    return root / f".tmp-{storage_id}.rank{rank}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


# What a rank's report may hold, well below a collective's limit (MAX_MESSAGE, 64 MiB).
_MAX_REPORT_BYTES = 16 * 1024 * 1024


def _report(error: BaseException | None, metadata: dict[str, Any], part: Path) -> Any:
    """What this rank tells the chief, as JSON that surely goes through a gather."""
    if error is None:
        try:
            files = _part_files(part)
            report = {"error": None, "metadata": metadata, "files": files}
            if len(json.dumps(report)) <= _MAX_REPORT_BYTES:
                return report
            problem = (
                f"its part lists {len(files)} files, more than a report of "
                f"{_MAX_REPORT_BYTES // (1024 * 1024)} MiB holds: write fewer, larger files"
            )
        except (OSError, ValueError, TypeError) as exc:
            problem = _describe(exc)
    else:
        problem = _describe(error)
    return {"error": problem, "metadata": {}, "files": []}


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
    own: dict[str, Any] = {}
    problem: str | None = None
    try:
        given = dict(metadata or {})
        limit = MAX_CHECKPOINT_METADATA_BYTES
        check_json("checkpoint metadata", given, limit, "MAX_CHECKPOINT_METADATA_BYTES")
        check_finite("checkpoint metadata", given)
        # A copy of its own: what the block does to the caller's dict changes nothing.
        own = json.loads(json.dumps(given))
        root.mkdir(parents=True, exist_ok=True)
        part.mkdir()
    except (OSError, ValueError, TypeError) as exc:
        problem = _describe(exc)
    try:
        starting = dist.gather(problem)
        first = _first_problem(starting, "could not start its part") if rank == 0 else None
        verdict = dist.broadcast(first)
        if verdict is not None:
            raise ShardedCheckpointError(verdict)
        error: BaseException | None = None
        try:
            yield part, storage_id
            fsync_tree(part)
        except BaseException as exc:  # noqa: BLE001  (the others learn of it, then it goes on)
            error = exc
        gathered = dist.gather(_report(error, own, part))
        outcome: str | None = None
        if gathered is not None:  # the chief: it has every rank's report
            outcome = _assembled(root, storage_id, gathered, checked, commit)
        outcome = dist.broadcast(outcome)
        if error is not None:
            raise error
        if outcome is not None:
            raise ShardedCheckpointError(outcome)
    finally:
        # Nothing of a part stays, whatever happened (a rank that died, a lost chief).
        _remove(part)


def _assembled(
    root: Path,
    storage_id: str,
    parts: list[dict[str, Any]],
    checked: Callable[[dict[str, Any] | None], dict[str, Any]],
    commit: Callable[[Path, str, dict[str, Any]], None],
) -> str | None:
    """On the chief: the parts made one checkpoint (None), or why not, with every part
    removed (the storage is shared: the chief sees every rank's)."""
    try:
        _assemble(root, storage_id, parts, checked, commit)
    except BaseException as exc:  # every rank must learn it, whatever it was
        _remove(root / f".tmp-{storage_id}")
        for rank in range(len(parts)):
            _remove(_part_dir(root, storage_id, rank))
        if not isinstance(exc, Exception):
            raise  # (the chief is going: the others see its connection close)
        if isinstance(exc, ShardedCheckpointError):
            return str(exc)
        return f"checkpoint {storage_id} was not saved: {_describe(exc)}"
    return None


def _first_problem(problems: list[Any] | None, what: str) -> str | None:
    for rank, problem in enumerate(problems or []):
        if problem:
            return f"rank {rank} {what}: {problem}; nothing was saved"
    return None
