"""One set of limits (issue 16 item 4): each limit of :mod:`rung.broker.limits` is checked
where data enters, with an error that names it; decoding never fails with anything but a
``DecodeError``; a publish the broker refuses as too large is a permanent error."""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import random
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import aiormq.exceptions
import pytest

from rung.broker import archive as archive_module
from rung.broker import limits
from rung.broker.archive import (
    RATIO_FLOOR_BYTES,
    ArchiveError,
    ArchiveLimits,
    extract,
    pack,
    validate,
    validate_async,
)
from rung.broker.errors import DecodeError, MessageTooLargeError
from rung.broker.rabbit import RabbitBroker, refusal_error
from rung.broker.schemas import RpcReply
from rung.broker.schemas import envelope as envelope_module
from rung.broker.schemas.envelope import Envelope, check_json_depth, decode, encode
from rung.searcher.eventlog.file import FileEventLog

# ---------------------------------------------------------------- messages


def _metrics_message(metrics: str) -> bytes:
    return (
        b'{"schema_version": 1, "message_id": "m", "body": {"type": "metrics_reported", '
        b'"experiment_id": "e", "trial_id": 1, "attempt": 1, "worker_id": "w", '
        b'"group": "training", "steps_completed": 1, "metrics": ' + metrics.encode() + b"}}"
    )


def test_the_envelope_limit_is_the_one_of_broker_limits() -> None:
    assert envelope_module.MAX_MESSAGE_BYTES == limits.MAX_MESSAGE_BYTES
    assert limits.MAX_MESSAGE_BYTES < limits.BROKER_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_json_nested_too_deeply_is_refused_before_parsing(depth: int) -> None:
    """Old behaviour: json.loads recursed and raised RecursionError at 100,000 levels,
    which no consumer caught: the message looped."""
    data = b"[" * depth + b"]" * depth
    with pytest.raises(DecodeError, match=r"deeper than 64 levels \(MAX_JSON_DEPTH\)"):
        decode(data)
    nested = '{"a": ' * depth + "1" + "}" * depth
    with pytest.raises(DecodeError, match="MAX_JSON_DEPTH"):
        decode(_metrics_message(nested))


def test_depth_counts_brackets_outside_strings_only() -> None:
    check_json_depth(b'["' + b"[{" * 10_000 + b'"]')
    check_json_depth(b'["\\"' + b"[" * 10_000 + b'"]')
    check_json_depth(b"[" * 64 + b"]" * 64)
    check_json_depth(b"[" + b"[]," * 100_000 + b"[]]")  # wide, not deep
    with pytest.raises(DecodeError, match="MAX_JSON_DEPTH"):
        check_json_depth(b"[" * 65 + b"]" * 65)


def test_metrics_nested_within_the_limit_decode() -> None:
    nested = '{"a": ' * 50 + "1" + "}" * 50
    envelope = decode(_metrics_message(nested))
    assert envelope.body.type == "metrics_reported"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"schema_version": 1, "seq": ' + b"9" * 5000 + b"}", "ValueError"),
        (b'{"schema_version": 1, "x": NaN}', "NaN is not a JSON number"),
        (b'{"schema_version": 1, "x": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"schema_version": 1, "x": "\xff\xfe"}', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_every_decoding_failure_is_a_decode_error(data: bytes, message: str) -> None:
    """Old behaviour: a 5000-digit number raised a bare ValueError (int conversion limit),
    and NaN passed."""
    with pytest.raises(DecodeError, match=message):
        decode(data)


@pytest.mark.parametrize("error", [MemoryError, RecursionError, OverflowError])
def test_memory_and_recursion_errors_while_decoding_are_decode_errors(
    error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise error("boom")

    monkeypatch.setattr("rung.broker.schemas.envelope.json.loads", failing)
    with pytest.raises(DecodeError, match=error.__name__):
        decode(b'{"schema_version": 1}')


def test_decode_refuses_a_message_over_the_limit_naming_it() -> None:
    with pytest.raises(DecodeError, match=r"over the \d+ byte limit \(MAX_MESSAGE_BYTES\)"):
        decode(b" " * (limits.MAX_MESSAGE_BYTES + 1))


def test_encode_refuses_an_envelope_over_the_limit_naming_it() -> None:
    """Old behaviour: encode sent anything; the broker closed the channel and the sender
    saw 'the connection to the broker is down'."""
    big = RpcReply(ok=True, result={"records": ["x" * limits.MAX_MESSAGE_BYTES]})
    with pytest.raises(MessageTooLargeError, match=r"rpc_reply message is \d+ bytes.*MAX_MESSAGE"):
        encode(Envelope(message_id="m", body=big))
    small = Envelope(message_id="m", body=RpcReply(ok=True, result={"x": 1}))
    assert decode(encode(small)) == small


# ---------------------------------------------------------------- the broker's 406


_TOO_LARGE = (
    "PRECONDITION_FAILED - message size 52428800 is larger than configured max size 50331648"
)


def test_a_406_for_size_is_a_message_too_large_error_naming_size_and_limit() -> None:
    exc = aiormq.exceptions.ChannelPreconditionFailed(_TOO_LARGE)
    error = refusal_error(exc, "msg-1", 52428800)
    assert isinstance(error, MessageTooLargeError)
    assert "52428800 bytes" in str(error)
    assert "50331648" in str(error)
    assert "BROKER_MAX_MESSAGE_BYTES" in str(error)
    other = refusal_error(aiormq.exceptions.ChannelPreconditionFailed("user_id"), "m", 1)
    assert not isinstance(other, MessageTooLargeError)
    assert "406 PRECONDITION_FAILED" in str(other)


class _RefusingExchange:
    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise aiormq.exceptions.ChannelPreconditionFailed(_TOO_LARGE)


async def test_a_406_is_not_retried_as_a_lost_connection() -> None:
    """Old behaviour: the 406 was an AMQPError, so publish retried it for ``timeout``
    seconds and then said 'the connection to the broker is down'."""
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/")
    exchange = _RefusingExchange()
    broker._channel = object()  # type: ignore[assignment]
    broker._exchanges["x"] = exchange  # type: ignore[assignment]
    with pytest.raises(MessageTooLargeError, match="max_message_size"):
        await broker.publish("x", "k", b"{}", message_id="m", timeout=5)
    assert exchange.calls == 1


# ---------------------------------------------------------------- archives


def _tar(*members: tuple[tarfile.TarInfo, bytes], compresslevel: int = 6) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return gzip.compress(buffer.getvalue(), compresslevel=compresslevel)


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def test_entries_are_limited_while_streaming() -> None:
    archive = _tar(*(_file(f"f{i}", b"") for i in range(50)))
    assert len(validate(archive)) == 50
    with pytest.raises(ArchiveError, match=r"more than 10 entries \(MAX_CONTEXT_ENTRIES\)"):
        validate(archive, limits=ArchiveLimits(entries=10))


def test_the_unpacked_size_is_limited_at_the_header_before_the_data() -> None:
    archive = _tar(_file("big", b"\x01" * 5000))
    with pytest.raises(ArchiveError, match=r"more than 4000 bytes \(MAX_CONTEXT_UNPACKED_BYTES\)"):
        validate(archive, limits=ArchiveLimits(unpacked_bytes=4000))


def test_the_running_unpacked_size_counts_every_member() -> None:
    archive = _tar(*(_file(f"f{i}", b"\x01" * 1000) for i in range(10)))
    validate(archive, limits=ArchiveLimits(unpacked_bytes=40_000))
    with pytest.raises(ArchiveError, match="MAX_CONTEXT_UNPACKED_BYTES"):
        validate(archive, limits=ArchiveLimits(unpacked_bytes=8_000))


def test_the_ratio_is_limited_past_its_floor() -> None:
    zeros = _tar(_file("zeros", bytes(4 * RATIO_FLOOR_BYTES)), compresslevel=9)
    with pytest.raises(ArchiveError, match=r"a ratio over 200 \(MAX_CONTEXT_RATIO\)"):
        validate(zeros)
    # Below the floor, any ratio is fine: a small archive of text can do no harm.
    small = _tar(_file("zeros", bytes(RATIO_FLOOR_BYTES // 2)), compresslevel=9)
    assert validate(small) == ["zeros"]


def test_the_ratio_is_of_the_whole_archive_so_a_compressible_start_is_fine() -> None:
    """4 MiB of zeros first (a ratio of 1000 on its own), then 1 MiB of noise: about 5
    to 1 in all, which passes."""
    archive = _tar(
        _file("zeros", bytes(4 * RATIO_FLOOR_BYTES)),
        _file("noise", random.Random(7).randbytes(RATIO_FLOOR_BYTES)),
    )
    assert validate(archive) == ["zeros", "noise"]


def test_time_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(archive_module, "_clock", lambda: next(clock))
    archive = _tar(*(_file(f"f{i}") for i in range(20)))
    with pytest.raises(ArchiveError, match=r"more than 5 s to check \(MAX_CONTEXT_SECONDS\)"):
        validate(archive, limits=ArchiveLimits(seconds=5))


def test_the_compressed_size_is_limited() -> None:
    archive = _tar(_file("a", b"abc"))
    with pytest.raises(ArchiveError, match=r"over the 10 limit \(MAX_CONTEXT_BYTES\)"):
        validate(archive, limits=ArchiveLimits(compressed_bytes=10))


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("/etc/passwd"), "leaves the directory"),
        (_file("../escape.py"), "leaves the directory"),
        (_file("a/../../escape.py"), "leaves the directory"),
        (_special("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link or device"),
        (_special("hard", tarfile.LNKTYPE, "/etc/passwd"), "is a link or device"),
        (_special("dev", tarfile.CHRTYPE), "is a link or device"),
        (_special("blk", tarfile.BLKTYPE), "is a link or device"),
        (_special("fifo", tarfile.FIFOTYPE), "is a link or device"),
        (_file("suid", mode=0o4755), "setuid or setgid"),
        (_file("sgid", mode=0o2755), "setuid or setgid"),
    ],
)
def test_path_tricks_are_refused_when_validating_and_extracting(
    member: tuple[tarfile.TarInfo, bytes], message: str, tmp_path: Path
) -> None:
    archive = _tar(_file("ok.py"), member)
    with pytest.raises(ArchiveError, match=message):
        validate(archive)
    with pytest.raises(ArchiveError, match=message):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()


def test_extraction_applies_the_streaming_limits(tmp_path: Path) -> None:
    archive = _tar(*(_file(f"f{i}") for i in range(30)))
    with pytest.raises(ArchiveError, match="MAX_CONTEXT_ENTRIES"):
        extract(archive, tmp_path / "out", limits=ArchiveLimits(entries=10))


def test_packing_clears_setuid_bits(tmp_path: Path) -> None:
    script = tmp_path / "ctx" / "run.sh"
    script.parent.mkdir()
    script.write_text("echo hi")
    script.chmod(0o4755)
    archive = pack(tmp_path / "ctx")
    assert validate(archive) == ["run.sh"]
    extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "run.sh").stat().st_mode & stat.S_ISUID


async def test_validate_async_checks_in_a_child_and_the_loop_goes_on() -> None:
    good = _tar(_file("train.py", b"print(1)"))
    assert await validate_async(good) == ["train.py"]
    bomb = _tar(*(_file(f"f{i}", b"") for i in range(limits.MAX_CONTEXT_ENTRIES + 1)))
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(ticking())
    try:
        with pytest.raises(ArchiveError, match="MAX_CONTEXT_ENTRIES"):
            await validate_async(bomb)
    finally:
        ticker.cancel()
    assert ticks > 1  # the loop ran while the child checked


async def test_validate_async_stops_a_child_over_its_cpu_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = "import resource; resource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True: pass"
    monkeypatch.setattr(archive_module, "_CHILD_CODE", code)
    with pytest.raises(ArchiveError, match=r"CPU to check \(MAX_CONTEXT_SECONDS.*SIGXCPU"):
        await validate_async(_tar(_file("a")))


async def test_validate_async_has_a_wall_clock_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "_CHILD_CODE", "import time; time.sleep(60)")
    monkeypatch.setattr(archive_module, "_CHILD_WALL_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="MAX_CONTEXT_SECONDS"):
        await validate_async(_tar(_file("a")))
    assert time.monotonic() - started < 30  # killed, not waited for


async def test_validate_async_refuses_a_huge_pax_header_in_bounded_memory() -> None:
    """A pax header declaring 1 GiB of zeros: refused by the ratio, long before it is in
    memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "0" * (8 * RATIO_FLOOR_BYTES)}
        tar.addfile(info, io.BytesIO(b""))
    archive = gzip.compress(buffer.getvalue(), compresslevel=9)
    with pytest.raises(ArchiveError, match="MAX_CONTEXT_RATIO"):
        await validate_async(archive)


# ---------------------------------------------------------------- paged replies


def test_read_after_pages_by_bytes_and_always_returns_a_record(tmp_path: Path) -> None:
    path = tmp_path / "experiments" / "e" / "events.jsonl"
    log = FileEventLog(path)
    for i in range(20):
        log.take_over("o" * (1000 if i != 7 else 10_000), sync=False)
    lines = log.read_after(0, 1000, max_bytes=5000)
    assert 1 <= len(lines) < 20
    assert sum(len(line) + 1 for line in lines) <= 5000
    # A record larger than the page comes alone.
    assert len(log.read_after(7, 1000, max_bytes=5000)) == 1
    assert json.loads(log.read_after(7, 1000, max_bytes=5000)[0])["seq"] == 8
    # Paging by the last record read reaches the end, in order, without a gap.
    seqs: list[int] = []
    after = 0
    while after < log.seq:
        page = log.read_after(after, 1000, max_bytes=5000)
        seqs += [json.loads(line)["seq"] for line in page]
        after = seqs[-1]
    assert seqs == list(range(1, 21))
    # The default is MAX_REPLY_BYTES: all twenty fit.
    assert len(log.read_after(0, 1000)) == 20
    log.close()
    reopened = FileEventLog(path)  # offsets of a log opened from disk
    assert len(reopened.read_after(0, 1000, max_bytes=5000)) == len(lines)
    reopened.close()
