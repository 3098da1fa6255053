"""Experiment contexts: ignore files, size limits, safe extraction, and crash-safe storage
and extraction on disk (no torn archive or half-extracted directory is ever used)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from rung.broker import contexts as contexts_module
from rung.broker.archive import ArchiveError, context_hash, extract, pack, validate
from rung.broker.contexts import (
    COMPLETE_MARKER,
    archive_path,
    ensure_extracted,
    extract_atomically,
    is_complete,
    read_archive,
    store_archive,
    store_context,
)
from rung.broker.schemas import GetContext, RpcReply
from rung.worker.contexts import ContextCache, ContextUnavailableError


def test_pack_honours_ignore_files_and_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x" * 100)
    (tmp_path / "notes.tmp").write_text("x")
    (tmp_path / ".rungignore").write_text("data/\n")
    (tmp_path / ".detignore").write_text("*.tmp\n")
    archive = pack(tmp_path)
    assert pack(tmp_path) == archive
    names = validate(archive)
    assert "train.py" in names
    assert not any(n.startswith("data") or n.endswith(".tmp") for n in names)
    out = tmp_path / "out"
    extract(archive, out)
    assert (out / "train.py").read_text() == "print(1)"


def test_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(ArchiveError, match=r"list data and outputs in \.rungignore"):
        pack(tmp_path, limit=1000)


def _tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../escape.py"), "leaves the directory"),
        (tarfile.TarInfo("/etc/passwd"), "leaves the directory"),
    ],
)
def test_members_that_leave_the_directory_are_refused(
    member: tarfile.TarInfo, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ArchiveError, match=message):
        extract(_tar(member, b"x"), tmp_path)


def test_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(ArchiveError, match="is a link or device"):
        extract(_tar(link), tmp_path)


def test_garbage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a valid gzip'd tar"):
        extract(b"not a tar", tmp_path)


# ---------------------------------------------------------------- crash-safe contexts on disk


def _context(files: dict[str, str]) -> bytes:
    root = Path(tempfile.mkdtemp())
    try:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        return pack(root)
    finally:
        shutil.rmtree(root)


FILES = {"train.py": "print('train')", "pkg/model.py": "LAYERS = 3", "pkg/data/a.txt": "a"}


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path os.fsync is called on, in order (the real fsync still runs)."""
    calls: list[Path] = []
    real = os.fsync

    def recording(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".stale-" in p.name)


def test_store_archive_writes_a_verified_durable_file(tmp_path: Path, fsyncs: list[Path]) -> None:
    data = _context(FILES)
    contexts = tmp_path / "contexts"
    digest = store_archive(data, contexts)
    assert digest == context_hash(data)
    path = archive_path(contexts, digest)
    assert path.read_bytes() == data
    assert read_archive(contexts, digest) == data
    # The content was fsync'd under a temporary name (before the rename), then the directory.
    file_syncs = [p for p in fsyncs if p.parent == contexts and p.name != path.name]
    assert len(file_syncs) == 1
    assert file_syncs[0].name.startswith(f".{path.name}.tmp-")
    assert fsyncs[-1] == contexts
    assert fsyncs.index(file_syncs[0]) < len(fsyncs) - 1
    assert _leftovers(contexts) == []


def test_store_archive_keeps_a_good_file_and_replaces_a_torn_one(
    tmp_path: Path, fsyncs: list[Path]
) -> None:
    data = _context(FILES)
    digest = store_archive(data, tmp_path)
    path = archive_path(tmp_path, digest)
    inode = path.stat().st_ino
    fsyncs.clear()
    # Already there with the right content: kept as it is, and fsync'd with its directory.
    assert store_archive(data, tmp_path) == digest
    assert path.stat().st_ino == inode
    assert fsyncs == [path, tmp_path]
    # Torn by a crash (old versions wrote in place, without fsync): never served, replaced.
    path.write_bytes(data[: len(data) // 2])
    assert read_archive(tmp_path, digest) is None
    assert store_archive(data, tmp_path) == digest
    assert path.read_bytes() == data
    assert read_archive(tmp_path, digest) == data


def test_read_archive_takes_only_content_hashes(tmp_path: Path) -> None:
    (tmp_path / "secret.tar.gz").write_bytes(b"x")
    assert read_archive(tmp_path / "contexts", "../secret") is None
    assert read_archive(tmp_path, "0" * 64) is None
    with pytest.raises(ValueError, match="is not a context hash"):
        archive_path(tmp_path, "../secret")


def test_extract_atomically_fsyncs_everything_then_renames(
    tmp_path: Path, fsyncs: list[Path]
) -> None:
    data = _context(FILES)
    target = tmp_path / "ctx"
    assert extract_atomically(data, target) == target
    assert _tree(target) == FILES
    assert is_complete(target)
    assert _leftovers(tmp_path) == []
    # Everything was fsync'd inside the temporary directory, before the rename ...
    temporaries = {p.relative_to(tmp_path).parts[0] for p in fsyncs[:-1]}
    assert len(temporaries) == 1
    temporary = tmp_path / temporaries.pop()
    assert temporary.name.startswith(".ctx.tmp-")
    synced = {p.relative_to(temporary).as_posix() for p in fsyncs[:-1]}
    assert synced == {*FILES, COMPLETE_MARKER, "pkg", "pkg/data", "."}
    # ... the directories after their entries, and the parent last, after the rename.
    assert fsyncs.index(temporary / "pkg" / "data" / "a.txt") < fsyncs.index(
        temporary / "pkg" / "data"
    )
    assert fsyncs[-2] == temporary
    assert fsyncs[-1] == tmp_path


def test_a_complete_target_is_used_as_it_is(tmp_path: Path) -> None:
    data = _context(FILES)
    target = extract_atomically(data, tmp_path / "ctx")
    (target / "train.py").write_text("edited")
    extract_atomically(data, target)
    assert (target / "train.py").read_text() == "edited"


def test_an_error_mid_extraction_leaves_nothing_and_a_retry_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _context(FILES)
    target = tmp_path / "ctx"
    real = tarfile.TarFile.makefile
    written: list[str] = []

    def failing(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        if written:
            raise OSError(28, "No space left on device")
        real(self, tarinfo, targetpath)
        written.append(targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", failing)
    with pytest.raises(OSError, match="No space left"):
        extract_atomically(data, target)
    assert len(written) == 1  # it did fail half-way
    assert not target.exists()
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    extract_atomically(data, target)
    assert _tree(target) == FILES
    assert is_complete(target)


_KILLED_MID_EXTRACTION = """
import os, signal, sys, tarfile
from pathlib import Path
from rung.broker.contexts import extract_atomically

real = tarfile.TarFile.makefile
def makefile(self, tarinfo, targetpath):
    real(self, tarinfo, targetpath)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no except, finally or atexit runs
tarfile.TarFile.makefile = makefile
extract_atomically(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]))
"""


def test_a_process_killed_mid_extraction_leaves_no_target_and_its_leftover_is_never_used(
    tmp_path: Path,
) -> None:
    data = _context(FILES)
    archive = tmp_path / "ctx.tar.gz"
    archive.write_bytes(data)
    target = tmp_path / "contexts" / "ctx"
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_EXTRACTION, str(archive), str(target)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not target.exists()
    leftover = _leftovers(target.parent)
    assert len(leftover) == 1  # half extracted, under its temporary name
    half = target.parent / leftover[0]
    assert [p.name for p in half.rglob("*") if p.is_file()] == ["a.txt"]
    extract_atomically(data, target)
    assert _tree(target) == FILES
    assert _leftovers(target.parent) == []


def test_a_half_extracted_directory_without_the_marker_is_extracted_again(
    tmp_path: Path,
) -> None:
    data = _context(FILES)
    target = tmp_path / "ctx"
    # What the old code (mkdir, then extract in place) left after a crash half-way.
    (target / "pkg").mkdir(parents=True)
    (target / "train.py").write_text("print('tr")
    (target / "pkg" / "partial.tmp").write_text("junk")
    assert not is_complete(target)
    extract_atomically(data, target)
    assert _tree(target) == FILES
    assert is_complete(target)
    assert _leftovers(tmp_path) == []


def test_a_target_completed_meanwhile_by_another_extraction_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _context(FILES)
    target = tmp_path / "ctx"
    real = contexts_module._unpack

    def racing(archive: bytes, directory: Path, limit: int | None = None) -> None:
        real(archive, directory, limit)
        # Another extraction (one that took no lock: a filesystem without flock, say)
        # renames its complete directory into place first.
        other = tmp_path / "other"
        real(archive, other, None)
        (other / "winner").write_text("the other one")
        (other / COMPLETE_MARKER).write_bytes(b"")
        other.rename(target)

    monkeypatch.setattr(contexts_module, "_unpack", racing)
    assert extract_atomically(data, target) == target
    assert (target / "winner").read_text() == "the other one"
    assert _leftovers(tmp_path) == []


def test_concurrent_extractions_of_one_context_agree(tmp_path: Path) -> None:
    data = _context(FILES)
    target = tmp_path / "ctx"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: extract_atomically(data, target), range(8)))
    assert results == [target] * 8
    assert _tree(target) == FILES
    assert _leftovers(tmp_path) == []


def test_store_context_and_ensure_extracted(tmp_path: Path) -> None:
    data = _context(FILES)
    contexts = tmp_path / "contexts"
    digest, directory = store_context(data, contexts)
    assert directory == contexts / digest
    assert _tree(directory) == FILES
    # A directory the old code left without the marker is extracted again from the archive.
    (directory / COMPLETE_MARKER).unlink()
    (directory / "train.py").unlink()
    assert ensure_extracted(contexts, digest) == directory
    assert _tree(directory) == FILES
    assert ensure_extracted(contexts, "f" * 64) is None
    assert ensure_extracted(contexts, "../../etc") is None


HOSTILE = [
    (_tar(tarfile.TarInfo("../escape.py"), b"x"), "leaves the directory"),
    (_tar(tarfile.TarInfo("/etc/passwd"), b"x"), "leaves the directory"),
    (b"not a tar", "not a valid gzip'd tar"),
]


def _link() -> bytes:
    link = tarfile.TarInfo("link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    return _tar(link)


@pytest.mark.parametrize(
    ("archive", "message"),
    [*HOSTILE, (_link(), "is a link or device")],
)
def test_hostile_archives_are_refused_before_anything_is_written(
    archive: bytes, message: str, tmp_path: Path
) -> None:
    target = tmp_path / "contexts" / "ctx"
    with pytest.raises(ArchiveError, match=message):
        extract_atomically(archive, target)
    assert not target.parent.exists()


def test_archives_over_the_limit_are_refused(tmp_path: Path) -> None:
    data = _context({"big.bin": "x" * 5000})
    with pytest.raises(ArchiveError, match=r"more than 1000 bytes \(MAX_CONTEXT_UNPACKED_BYTES\)"):
        extract_atomically(data, tmp_path / "ctx", limit=1000)
    assert list(tmp_path.iterdir()) == []


class _FakeRpc:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    async def call(self, request: GetContext, timeout: float) -> RpcReply:
        self.calls += 1
        encoded = base64.b64encode(self.data).decode()
        return RpcReply(ok=True, result={"context_b64": encoded})


async def test_the_worker_cache_keeps_the_archive_and_rechecks_its_hash_before_each_use(
    tmp_path: Path,
) -> None:
    """Review #14: a cached context was trusted because of its marker; a trial could
    change it for the trials after it. Now the archive is hashed again at each use and
    every attempt gets a fresh copy."""
    data = _context(FILES)
    digest = context_hash(data)
    rpc = _FakeRpc(data)
    cache = ContextCache(rpc, tmp_path / "contexts")  # type: ignore[arg-type]
    run = await cache.run_dir(digest, tmp_path / "run1")
    assert _tree(run) == FILES
    # A trial changes its copy: the next attempt gets the archive's content, unfetched.
    (run / "train.py").write_text("import os; os.system('evil')")
    assert _tree(await cache.run_dir(digest, tmp_path / "run2")) == FILES
    assert rpc.calls == 1
    # Someone alters the cached archive on disk: this worker uses the copy it verified
    # and keeps in memory (issue 18); a restarted one finds that the file no longer
    # hashes to its name, so it is fetched again, never used.
    archive_path(tmp_path / "contexts", digest).write_bytes(_context({"train.py": "evil"}))
    assert _tree(await cache.run_dir(digest, tmp_path / "run3")) == FILES
    assert rpc.calls == 1
    restarted = ContextCache(rpc, tmp_path / "contexts")  # type: ignore[arg-type]
    assert _tree(await restarted.run_dir(digest, tmp_path / "run4")) == FILES
    assert rpc.calls == 2
    assert read_archive(tmp_path / "contexts", digest) == data


async def test_the_worker_keeps_a_bounded_number_of_archive_bytes_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rung.worker.contexts.MEMORY_BYTES", 1)  # one archive at most
    first, second = _context(FILES), _context({"train.py": "print('two')"})
    cache = ContextCache(_FakeRpc(first), tmp_path / "contexts")  # type: ignore[arg-type]
    await cache.archive(context_hash(first))
    cache.rpc = _FakeRpc(second)  # type: ignore[assignment]
    await cache.archive(context_hash(second))
    assert list(cache._memory) == [context_hash(second)]
    # The first one is read from disk again, hashed, and kept in the other's place.
    assert await cache.archive(context_hash(first)) == first
    assert list(cache._memory) == [context_hash(first)]


async def test_the_worker_cache_refuses_a_reply_that_does_not_match_the_hash(
    tmp_path: Path,
) -> None:
    rpc = _FakeRpc(_context({"train.py": "evil"}))
    cache = ContextCache(rpc, tmp_path / "contexts")  # type: ignore[arg-type]
    with pytest.raises(ContextUnavailableError, match="content hash mismatch"):
        await cache.run_dir(context_hash(_context(FILES)), tmp_path / "run")
    with pytest.raises(ContextUnavailableError, match="not a context hash"):
        await cache.run_dir("../" * 100, tmp_path / "run")


def test_a_directory_packs_to_the_same_bytes_whenever_it_is_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gzip stamps the time into its header unless told not to: the same context would
    get a new hash, and be stored again, at every create."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    first = pack(tmp_path)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)
    assert pack(tmp_path) == first
    assert context_hash(pack(tmp_path)) == context_hash(first)
