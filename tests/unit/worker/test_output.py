"""A trial's output made safe to ship: lines, cuts, the rate limit and bounded batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rung.broker.limits import (
    MAX_LOG_BATCH_BYTES,
    MAX_LOG_BATCH_LINES,
    MAX_LOG_LINE_CHARS,
    TRIAL_LOG_BURST_BYTES,
    TRIAL_LOG_BYTES_PER_S,
)
from rung.worker.output import LineSplitter, LogGate, TokenBucket, cost, cut_note


def split(*chunks: bytes, max_chars: int = MAX_LOG_LINE_CHARS) -> list[str]:
    splitter = LineSplitter(max_chars)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.close()


def test_lines_end_at_newlines_carriage_returns_and_both() -> None:
    assert split(b"a\nb\r\nc\rd") == ["a", "b", "c", "d"]
    assert split(b"\n\n") == ["", ""]  # empty lines are lines
    # A "\r\n" split across two reads is one line end.
    assert split(b"a\r", b"\nb\n") == ["a", "b"]


def test_a_progress_bar_gives_one_line_per_redraw() -> None:
    bar = b"".join(b"\r %3d%%|%s|" % (p, b"#" * (p // 10)) for p in range(0, 101, 25))
    assert split(bar + b"\n") == [
        "   0%||",
        "  25%|##|",
        "  50%|#####|",
        "  75%|#######|",
        " 100%|##########|",
    ]


def test_the_last_line_is_kept_without_its_newline() -> None:
    assert split(b"first\nlast") == ["first", "last"]
    assert split(b"") == []


def test_a_long_line_keeps_its_head_and_says_how_much_was_cut() -> None:
    lines = split(b"x" * 25, b"y" * 25 + b"\nshort\n", max_chars=10)
    assert lines == ["x" * 10 + cut_note(40), "short"]
    assert lines[0].endswith(" ... [cut: 40 more chars]")


def test_a_huge_line_is_never_held_whole() -> None:
    splitter = LineSplitter(MAX_LOG_LINE_CHARS)
    for _ in range(160):  # 10 MiB without a newline
        assert splitter.feed(b"z" * 65536) == []
        assert len(splitter._head) <= MAX_LOG_LINE_CHARS
    [line] = splitter.close()
    assert line == "z" * MAX_LOG_LINE_CHARS + cut_note(10 * 1024 * 1024 - MAX_LOG_LINE_CHARS)


def test_binary_output_becomes_replacement_characters() -> None:
    assert split(b"ok \xff\xfe\x00 end\n") == ["ok \ufffd\ufffd\x00 end"]
    # A character split across two reads is decoded whole.
    euro = "€".encode()
    assert split(euro[:1], euro[1:] + b"\n") == ["€"]


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_bytes_split_into_bounded_lines(chunks: list[bytes]) -> None:
    lines = split(*chunks, max_chars=16)
    assert all(len(line) <= 16 + len(cut_note(10**6)) for line in lines)
    assert all("\n" not in line and "\r" not in line for line in lines)


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=100, burst=1000, now=0.0)
    assert bucket.take(1000, 0.0)
    assert not bucket.take(1, 0.0)
    assert bucket.take(50, 0.5)  # 50 tokens came back in half a second
    assert not bucket.take(1, 0.5)
    assert bucket.take(1000, 100.0)  # never more than the burst
    assert not bucket.take(1, 100.0)


def test_what_is_over_the_rate_is_dropped_and_one_marker_says_how_much() -> None:
    gate = LogGate(0.0, rate=10, burst=20)
    assert gate.offer("stdout", "123456789", 0.0)  # 10 bytes with its newline
    assert gate.offer("stdout", "123456789", 0.0)
    assert not gate.offer("stdout", "dropped", 0.0)
    assert not gate.offer("stderr", "dropped too", 0.0)
    assert gate.offer("stdout", "again", 1.0)  # the rate has refilled it
    lines = gate.batch()
    assert [text for _, text in lines][:2] == ["123456789", "123456789"]
    stream, marker = lines[2]
    assert stream == "rung"
    assert "2 lines (20 bytes) of output were dropped" in marker
    assert "TRIAL_LOG_BYTES_PER_S" in marker
    assert lines[3] == ("stdout", "again")
    # At the end, a marker for what was dropped since the last one, and only then.
    gate.finish()
    assert gate.batch() == []
    assert not gate.offer("stdout", "x" * 100, 1.0)
    gate.finish()
    [(stream, marker)] = gate.batch()
    assert (stream, "1 lines (101 bytes)" in marker) == ("rung", True)
    assert (gate.total_dropped_lines, gate.total_dropped_bytes) == (3, 121)


def test_the_buffer_is_bounded_when_nothing_ships() -> None:
    gate = LogGate(0.0, rate=10**12, burst=10**12, capacity_bytes=1000)
    accepted = sum(gate.offer("stdout", "x" * 99, 0.0) for _ in range(1000))
    assert accepted == 10
    assert gate.buffered_bytes <= 1000
    assert gate.dropped_lines == 990


def test_rungs_own_lines_are_never_dropped() -> None:
    gate = LogGate(0.0, rate=1, burst=1)
    gate.add("rung", "warning: the process exited 0 early")
    assert gate.batch() == [("rung", "warning: the process exited 0 early")]


def test_empty_lines_cost_their_newline() -> None:
    gate = LogGate(0.0, rate=1, burst=100)
    assert sum(gate.offer("stdout", "", 0.0) for _ in range(1000)) == 100
    assert cost("") == 1
    assert cost("€") == 4


def test_batches_are_bounded_in_lines_and_bytes() -> None:
    gate = LogGate(0.0)
    for _ in range(MAX_LOG_BATCH_LINES * 3):
        gate.offer("stdout", "short", 0.0)
    sizes = [len(gate.batch()) for _ in range(4)]
    assert sizes == [MAX_LOG_BATCH_LINES] * 3 + [0]
    line = "€" * MAX_LOG_LINE_CHARS  # 48 KiB in UTF-8
    for _ in range(20):
        gate.offer("stdout", line, 0.0)
    while batch := gate.batch():
        assert sum(cost(text) for _, text in batch) <= MAX_LOG_BATCH_BYTES
        assert len(batch) <= MAX_LOG_BATCH_LINES


def test_the_defaults_are_rungs_limits() -> None:
    gate = LogGate(0.0)
    assert (gate.rate, gate.burst) == (TRIAL_LOG_BYTES_PER_S, TRIAL_LOG_BURST_BYTES)
    assert (gate.batch_lines, gate.batch_bytes) == (MAX_LOG_BATCH_LINES, MAX_LOG_BATCH_BYTES)
    assert gate.capacity_bytes == TRIAL_LOG_BURST_BYTES
