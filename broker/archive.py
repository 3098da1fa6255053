"""Experiment contexts: the directory with the training script, as a checked archive.

The client packs it once (honouring ``.rungignore`` and ``.detignore``), the searcher
stores it by content hash, and workers fetch and cache it. :mod:`rung.broker.contexts`
keeps archives and extracted directories on disk, crash-safe.

An archive is checked while it streams, never all at once, so a bomb is refused early:

* the compressed size (:data:`~rung.broker.limits.MAX_CONTEXT_BYTES`), before anything;
* the number of entries (:data:`~rung.broker.limits.MAX_CONTEXT_ENTRIES`), at each header;
* the unpacked size (:data:`~rung.broker.limits.MAX_CONTEXT_UNPACKED_BYTES`), both what
  the headers declare (a 1 GiB member is refused at its header) and what has been
  decompressed (headers, padding and pax records count too);
* the ratio of unpacked bytes to the whole archive's compressed size
  (:data:`~rung.broker.limits.MAX_CONTEXT_RATIO`), once more than :data:`RATIO_FLOOR_BYTES`
  are unpacked, so tiny archives are fine. The unpacked bytes only grow, so a ratio over
  the limit part-way is over it at the end: no archive is refused that would pass whole;
* the time spent (:data:`~rung.broker.limits.MAX_CONTEXT_SECONDS`);
* each member: no absolute path, no ``..``, nothing but plain files and directories (no
  symlink, hardlink, device or fifo), no setuid or setgid bit.

:func:`validate_async` runs :func:`validate` in a fresh child process with a CPU-time and
an address-space limit and a wall-clock timeout: the searcher's event loop never runs it
and a bomb cannot take the searcher's memory. :func:`extract` applies the same checks
while it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gzip
import hashlib
import io
import json
import math
import os
import resource
import signal
import stat
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rung.broker.limits import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_ENTRIES,
    MAX_CONTEXT_RATIO,
    MAX_CONTEXT_SECONDS,
    MAX_CONTEXT_UNPACKED_BYTES,
)

__all__ = [
    "MAX_CONTEXT_BYTES",
    "RATIO_FLOOR_BYTES",
    "ArchiveError",
    "ArchiveLimits",
    "context_hash",
    "extract",
    "pack",
    "validate",
    "validate_async",
]

# Below this many unpacked bytes the ratio is not checked: a small archive of text
# compresses well, and can do no harm.
RATIO_FLOOR_BYTES = 1024 * 1024
_IGNORE_FILES = (".rungignore", ".detignore")
_ALWAYS_IGNORED = ("__pycache__", "*.pyc", ".git", ".venv")
_READ_CHUNK = 64 * 1024
_clock = time.monotonic
# What the system allows a path, and one part of it: a longer member name could not be
# extracted (ENAMETOOLONG) anywhere, so it is refused when the archive is checked. Half of
# PATH_MAX is left for the directory the context is extracted to.
_PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
_NAME_MAX = os.pathconf("/", "PC_NAME_MAX")
_MAX_NAME_BYTES = _PATH_MAX // 2


class ArchiveError(ValueError):
    """An experiment context that cannot be packed or safely extracted."""


@dataclass(frozen=True)
class ArchiveLimits:
    """The limits one check applies (:mod:`rung.broker.limits` by default; tests lower
    them)."""

    compressed_bytes: int = MAX_CONTEXT_BYTES
    unpacked_bytes: int = MAX_CONTEXT_UNPACKED_BYTES
    entries: int = MAX_CONTEXT_ENTRIES
    ratio: float = MAX_CONTEXT_RATIO
    seconds: float = MAX_CONTEXT_SECONDS


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
            info.mode &= 0o777  # no setuid, setgid or sticky bit: extraction refuses them
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


def context_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Guard(io.RawIOBase):
    """The decompressed tar stream, counted as it is read: past a limit (unpacked size,
    ratio, time), reading raises :class:`ArchiveError` naming it."""

    def __init__(self, data: bytes, limits: ArchiveLimits) -> None:
        super().__init__()
        self._raw = io.BytesIO(data)
        self.compressed = len(data)
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self.limits = limits
        self.unpacked = 0
        self.started = _clock()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), _READ_CHUNK)
        self.check_time()
        try:
            chunk = self._gzip.read(want)
        except (OSError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"context archive is not a valid gzip'd tar: {exc}") from None
        view[: len(chunk)] = chunk
        self.unpacked += len(chunk)
        self.check_size(self.unpacked, "unpacks")
        return len(chunk)

    def check_time(self) -> None:
        elapsed = _clock() - self.started
        if elapsed > self.limits.seconds:
            raise ArchiveError(
                f"context archive took more than {self.limits.seconds:g} s to check "
                f"(MAX_CONTEXT_SECONDS); make the context smaller or fewer files"
            )

    def check_size(self, unpacked: int, verb: str) -> None:
        limits = self.limits
        if unpacked > limits.unpacked_bytes:
            raise ArchiveError(
                f"context archive {verb} to more than {limits.unpacked_bytes} bytes "
                f"(MAX_CONTEXT_UNPACKED_BYTES); list data and outputs in .rungignore, "
                "and load data from shared storage"
            )
        compressed = max(self.compressed, 1)
        if unpacked > RATIO_FLOOR_BYTES and unpacked / compressed > limits.ratio:
            raise ArchiveError(
                f"context archive {verb} to {unpacked} bytes from {compressed} compressed, "
                f"a ratio over {limits.ratio:g} (MAX_CONTEXT_RATIO): an archive bomb? "
                "pack the context with rung's client"
            )


def _check_member(member: tarfile.TarInfo) -> None:
    text = member.name
    shown = text if len(text) <= 80 else f"{text[:60]}...{text[-12:]}"
    parts = text.split("/")
    if text.startswith("/") or ".." in parts or "\x00" in text:
        raise ArchiveError(f"context archive member {shown!r} leaves the directory")
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > _MAX_NAME_BYTES or (
        size > _NAME_MAX
        and any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in parts)
    ):
        raise ArchiveError(
            f"context archive member {shown!r} has a name of {size} bytes, longer than "
            f"{_MAX_NAME_BYTES} bytes in all or {_NAME_MAX} per part (the system's PATH_MAX "
            "and NAME_MAX, with room for the directory it is extracted to)"
        )
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(
            f"context archive member {shown!r} is a link or device; "
            "only files and directories are allowed"
        )
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ArchiveError(
            f"context archive member {shown!r} has the setuid or setgid bit "
            f"(mode {member.mode:o}); only plain permissions are allowed"
        )


@contextlib.contextmanager
def _opened(data: bytes, limits: ArchiveLimits) -> Iterator[tuple[tarfile.TarFile, _Guard]]:
    if len(data) > limits.compressed_bytes:
        raise ArchiveError(
            f"context archive is {len(data)} bytes, over the {limits.compressed_bytes} limit "
            "(MAX_CONTEXT_BYTES); list data and outputs in .rungignore"
        )
    guard = _Guard(data, limits)
    try:
        stream = io.BufferedReader(guard, buffer_size=_READ_CHUNK)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar, guard
    except tarfile.TarError as exc:  # a bad header; errors writing files pass through
        raise ArchiveError(f"context archive is not a valid gzip'd tar: {exc}") from None


def _checked(tar: tarfile.TarFile, guard: _Guard) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` in order, each checked, with the limits checked before
    the member's data is read."""
    declared = 0
    for entries, member in enumerate(tar, start=1):
        if entries > guard.limits.entries:
            raise ArchiveError(
                f"context archive has more than {guard.limits.entries} entries "
                "(MAX_CONTEXT_ENTRIES); list generated files in .rungignore"
            )
        _check_member(member)
        declared += member.size
        guard.check_size(declared, "declares members adding up")
        guard.check_time()
        yield member


def validate(
    data: bytes, limit: int | None = None, *, limits: ArchiveLimits | None = None
) -> list[str]:
    """Check an archive as it streams, without extracting it; return its file names.

    ``limit``, if given, replaces both the compressed and the unpacked size limit.
    """
    applied = _limits(limit, limits)
    with _opened(data, applied) as (tar, guard):
        names = [member.name for member in _checked(tar, guard) if member.isfile()]
        # Read to the end: trailing data and the gzip trailer are checked too.
        while guard.read(_READ_CHUNK):
            pass
    return names


def extract(
    data: bytes,
    destination: str | Path,
    limit: int | None = None,
    *,
    limits: ArchiveLimits | None = None,
) -> None:
    """Extract in place, into ``destination`` as it is, checking as it streams (the same
    checks as :func:`validate`): not crash-safe, and a refused archive may leave part
    of itself behind. For a context kept on disk, use
    :func:`rung.broker.contexts.extract_atomically`."""
    applied = _limits(limit, limits)
    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    with _opened(data, applied) as (tar, guard):
        tar.extractall(dest, members=_checked(tar, guard), filter="data")


def _limits(limit: int | None, limits: ArchiveLimits | None) -> ArchiveLimits:
    applied = limits or ArchiveLimits()
    if limit is not None:
        applied = ArchiveLimits(
            compressed_bytes=limit,
            unpacked_bytes=limit,
            entries=applied.entries,
            ratio=applied.ratio,
            seconds=applied.seconds,
        )
    return applied


# ------------------------------------------------------------------ in a child process

# The child's resource limits follow from the archive limits: CPU time a little over the
# time limit, address space room for Python, one member's data and the decompressor.
_CHILD_CPU_SECONDS = math.ceil(MAX_CONTEXT_SECONDS) + 2
_CHILD_ADDRESS_SPACE = 2 * MAX_CONTEXT_UNPACKED_BYTES + 2 * MAX_CONTEXT_BYTES + 768 * 1024 * 1024
_CHILD_WALL_SECONDS = MAX_CONTEXT_SECONDS + 20.0
_CHILD_CODE = "from rung.broker.archive import _child_main; _child_main()"


async def validate_async(data: bytes) -> list[str]:
    """:func:`validate` with the default limits, in a fresh child process limited in CPU
    time and address space, with a wall-clock timeout: the caller's event loop goes on,
    and a bomb can exhaust neither its time nor its memory."""
    if len(data) > MAX_CONTEXT_BYTES:  # cheap, and saves a process
        return validate(data)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _CHILD_CODE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={},  # nothing of ours, credentials least of all, reaches the child
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(data), _CHILD_WALL_SECONDS)
    except TimeoutError:
        raise ArchiveError(
            f"context archive took more than {_CHILD_WALL_SECONDS:g} s to check "
            "(MAX_CONTEXT_SECONDS, with room to start the checker); make the context smaller"
        ) from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ArchiveError(_child_failure(process.returncode))
    if "error" in answer:
        raise ArchiveError(str(answer["error"]))
    return [str(name) for name in answer["names"]]


def _child_failure(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        if name in ("SIGXCPU", "SIGKILL"):
            return (
                f"context archive used more than {_CHILD_CPU_SECONDS} s of CPU to check "
                f"(MAX_CONTEXT_SECONDS; the checker was stopped by {name}); "
                "make the context smaller"
            )
        return f"the context archive checker was stopped by {name}"
    return f"the context archive checker failed (exit status {returncode})"


def _child_main() -> None:
    """In the child: limit ourselves, read the archive on stdin, answer JSON on stdout."""
    resource.setrlimit(resource.RLIMIT_CPU, (_CHILD_CPU_SECONDS, _CHILD_CPU_SECONDS + 1))
    with contextlib.suppress(ValueError, OSError):  # some sandboxes forbid it
        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_ADDRESS_SPACE, _CHILD_ADDRESS_SPACE))
    data = sys.stdin.buffer.read(MAX_CONTEXT_BYTES + 1)
    answer: dict[str, object]
    try:
        answer = {"names": validate(data)}
    except ArchiveError as exc:
        answer = {"error": str(exc)}
    except MemoryError:
        answer = {
            "error": "context archive needs more memory to check than the checker may use "
            "(MAX_CONTEXT_UNPACKED_BYTES); make the context smaller"
        }
    except RecursionError as exc:
        answer = {"error": f"context archive is not a valid gzip'd tar: {exc}"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    os._exit(0)
