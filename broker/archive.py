"""Experiment contexts: the directory with the training script, as a checked archive.

The client packs it once (honouring ``.rungignore`` and ``.detignore``), the searcher
stores it by content hash, and workers fetch and cache it. Extraction refuses absolute
paths, ``..``, links and anything that is not a plain file or directory, and archives
over the size limit. :mod:`rung.broker.contexts` keeps archives and extracted directories
on disk, crash-safe.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import tarfile
from pathlib import Path, PurePosixPath

__all__ = ["MAX_CONTEXT_BYTES", "ArchiveError", "context_hash", "extract", "pack", "validate"]

MAX_CONTEXT_BYTES = 64 * 1024 * 1024
_IGNORE_FILES = (".rungignore", ".detignore")
_ALWAYS_IGNORED = ("__pycache__", "*.pyc", ".git", ".venv")


class ArchiveError(ValueError):
    """An experiment context that cannot be packed or safely extracted."""


def _ignore_patterns(root: Path) -> list[str]:
    patterns = list(_ALWAYS_IGNORED)
    for name in _IGNORE_FILES:
        path = root / name
        if path.is_file():
            for raw in path.read_text(encoding="utf-8").splitlines():
                line = raw.strip()
                if line and not line.startswith("#"):
                    patterns.append(line.rstrip("/"))
    return patterns


def _ignored(relative: PurePosixPath, patterns: list[str]) -> bool:
    text = relative.as_posix()
    return any(
        fnmatch.fnmatch(text, p)
        or fnmatch.fnmatch(relative.name, p)
        or any(fnmatch.fnmatch(part, p) for part in relative.parts)
        for p in patterns
    )


def pack(directory: str | Path, limit: int = MAX_CONTEXT_BYTES) -> bytes:
    """The directory as a gzip'd tar, files in sorted order, owners and times cleared
    (the gzip header's too): the same directory packs to the same bytes, and so to the
    same context hash, whenever it is packed."""
    root = Path(directory)
    if not root.is_dir():
        raise ArchiveError(f"context directory {root} does not exist or is not a directory")
    patterns = _ignore_patterns(root)
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if _ignored(relative, patterns) or path.is_symlink():
                continue
            if path.is_file():
                total += path.stat().st_size
                if total > limit:
                    raise ArchiveError(
                        f"context {root} is larger than {limit // (1024 * 1024)} MiB; list "
                        "data and outputs in .rungignore, and load data from shared storage"
                    )
            info = tar.gettarinfo(str(path), arcname=relative.as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


def context_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ArchiveError(f"context archive member {member.name!r} leaves the directory")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(
            f"context archive member {member.name!r} is a link or device; "
            "only files and directories are allowed"
        )


def validate(data: bytes, limit: int = MAX_CONTEXT_BYTES) -> list[str]:
    """Check an archive without extracting it; return its file names."""
    if len(data) > limit:
        raise ArchiveError(f"context archive is {len(data)} bytes, over the {limit} limit")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"context archive is not a valid gzip'd tar: {exc}") from None
    total = 0
    for member in members:
        _check_member(member)
        total += member.size
    if total > limit:
        raise ArchiveError(f"context unpacks to {total} bytes, over the {limit} limit")
    return [m.name for m in members if m.isfile()]


def extract(data: bytes, destination: str | Path, limit: int = MAX_CONTEXT_BYTES) -> None:
    """Extract in place, into ``destination`` as it is: not crash-safe. For a context kept
    on disk, use :func:`rung.broker.contexts.extract_atomically`."""
    validate(data, limit)
    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
