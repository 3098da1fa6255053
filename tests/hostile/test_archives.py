"""Archive bombs and path tricks (issue 16 item 4, review #12), each sent as a real
CreateExperiment to a real searcher on RabbitMQ: each is refused with an error that names
the limit, while the searcher keeps answering a describe of another experiment.

The bound on each answer is the request's timeout (``_BOUND_S``): a create that is not
answered within it fails the test. The describe latencies during each bomb are printed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rung.broker.archive import RATIO_FLOOR_BYTES
from rung.broker.limits import MAX_CONTEXT_ENTRIES, MAX_CONTEXT_SECONDS
from rung.broker.schemas import CreateExperiment
from tests.hostile.conftest import HostileTally
from tests.hostile.rig import SINGLE, describe_latencies, running_rig

pytestmark = pytest.mark.rabbitmq

_BOUND_S = MAX_CONTEXT_SECONDS + 30


def _empty_file_header(name: str) -> bytes:
    return tarfile.TarInfo(name).tobuf(format=tarfile.USTAR_FORMAT)


@functools.cache
def empty_entries() -> bytes:
    """300,000 empty files with distinct names (the review's had 655 KiB of gzip): built
    from one header, its name and checksum patched, for speed."""
    template = bytearray(_empty_file_header("0" * 8))
    template[148:156] = b" " * 8
    base = sum(template) - sum(b"0" * 8)
    headers = []
    for i in range(300_000):
        name = f"{i:08x}".encode()
        header = bytearray(template)
        header[0:8] = name
        header[148:156] = b"%06o\x00 " % (base + sum(name))
        headers.append(bytes(header))
    return gzip.compress(b"".join(headers) + bytes(1024), compresslevel=6)


def _zeros(name: str, size: int) -> bytes:
    """A member of ``size`` bytes of zeros, as concatenated gzip members (a valid gzip
    file), without compressing all of it: one MiB of zeros is compressed once."""
    info = tarfile.TarInfo(name)
    info.size = size
    mebibyte = gzip.compress(bytes(1 << 20), compresslevel=9)
    return (
        gzip.compress(info.tobuf(format=tarfile.USTAR_FORMAT))
        + mebibyte * (size >> 20)
        + gzip.compress(bytes(1024))
    )


@functools.cache
def gigabyte_of_zeros() -> bytes:
    """One member of 1 GiB of zeros, in about 1 MiB of gzip."""
    return _zeros("zeros", 1 << 30)


@functools.cache
def zeros_under_the_size_limit() -> bytes:
    """100 MiB of zeros: under the unpacked-size limit, over the ratio."""
    return _zeros("zeros", 100 << 20)


def _tar(*members: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return gzip.compress(buffer.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.DIRTYPE,):
        info.mode = 0o755
    return info


def deep_chain() -> bytes:
    """A directory chain 3,000 levels deep, then a file at the bottom."""
    path = ""
    members = []
    for _ in range(3_000):
        path = f"{path}d/" if path else "d/"
        members.append(_member(path.rstrip("/"), tarfile.DIRTYPE))
    members.append(_member(f"{path}x.py"))
    return _tar(*members)


def huge_pax_header() -> bytes:
    """A pax header of 16 MiB (of zeros: about 16 KiB compressed)."""
    info = tarfile.TarInfo("a.py")
    info.pax_headers = {"comment": "0" * (16 * RATIO_FLOOR_BYTES)}
    return _tar(info)


BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "300,000 empty entries": (empty_entries, "MAX_CONTEXT_ENTRIES"),
    "1 GiB of zeros": (gigabyte_of_zeros, "MAX_CONTEXT_UNPACKED_BYTES"),
    "100 MiB of zeros": (zeros_under_the_size_limit, "MAX_CONTEXT_RATIO"),
    "a deep directory chain": (deep_chain, "longer than"),
    "a symlink escape": (lambda: _tar(_member("a", tarfile.SYMTYPE, "/etc")), "link or device"),
    "a hardlink escape": (
        lambda: _tar(_member("a", tarfile.LNKTYPE, "/etc/passwd")),
        "link or device",
    ),
    "an absolute path": (lambda: _tar(_member("/root/evil.py")), "leaves the directory"),
    "a dotdot path": (lambda: _tar(_member("a/../../evil.py")), "leaves the directory"),
    "a device node": (lambda: _tar(_member("null", tarfile.CHRTYPE)), "link or device"),
    "a huge pax header": (huge_pax_header, "MAX_CONTEXT_RATIO"),
    "not a gzip'd tar": (lambda: b"\x1f\x8b" + b"\x00" * 100, "not a valid gzip'd tar"),
}


async def test_archive_bombs_are_refused_naming_the_limit_while_the_searcher_answers(
    tmp_path: Path, hostile: HostileTally
) -> None:
    async with running_rig(tmp_path, with_worker=False) as rig:
        for case, (make, limit) in BOMBS.items():
            archive = await asyncio.to_thread(make)
            request = CreateExperiment(
                config=SINGLE, context_b64=base64.b64encode(archive).decode()
            )
            done = asyncio.Event()
            describing = asyncio.create_task(describe_latencies(rig, done))
            started = time.monotonic()
            try:
                reply = await rig.client.rpc.call(request, timeout=_BOUND_S)
            finally:
                done.set()
            seconds = time.monotonic() - started
            latencies = await describing
            assert not reply.ok, case
            assert reply.error is not None
            assert limit in reply.error.message, (case, reply.error.message)
            assert latencies, f"no describe was answered during {case}"
            print(  # noqa: T201 (the figures, as the issue asks)
                f"{case}: {len(archive)} bytes refused in {seconds:.2f} s "
                f"({reply.error.message[:90]}); describe answered {len(latencies)} times, "
                f"slowest {max(latencies) * 1000:.0f} ms"
            )
            hostile.record("archives", case, "refused", seconds)
        # The searcher still creates a well-behaved experiment after them all.
        summary = await rig.client.describe(rig.experiment_id)
        assert summary.experiment_id == rig.experiment_id


def test_the_entries_bomb_is_the_reviews() -> None:
    """The review's bomb: 300,000 entries, 15 times the limit, in about 2 MiB of gzip."""
    archive = empty_entries()
    assert len(archive) < 3 * 1024 * 1024
    assert gzip.decompress(archive).count(b"ustar") == 300_000 > MAX_CONTEXT_ENTRIES
