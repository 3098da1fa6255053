"""Experiment contexts: ignore files, size limits, and safe extraction."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from rung.broker.archive import ArchiveError, extract, pack, validate


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
