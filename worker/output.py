"""A trial's stdout and stderr, made safe to ship: lines, cut, rate-limited, bounded.

Training code writes whatever it likes: tqdm bars that redraw with ``\\r`` and never end a
line, a 10 MiB line of JSON, binary noise, hundreds of MiB as fast as it can. None of it
may stop the worker supervising the process. The pieces, each pure (no I/O, the clock
passed in):

* :class:`LineSplitter`: bytes in, lines out. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``
  (each redraw of a progress bar is a line); bytes that are not UTF-8 become U+FFFD; a line
  longer than :data:`MAX_LOG_LINE_CHARS` keeps its head and says how much was cut; the last
  line is kept without its newline. It holds at most one cut line, whatever comes in.
* :class:`TokenBucket`: :data:`TRIAL_LOG_BYTES_PER_S` with bursts of
  :data:`TRIAL_LOG_BURST_BYTES`.
* :class:`LogGate`: the bucket and a bounded buffer of accepted lines, taken out in batches
  of at most :data:`MAX_LOG_BATCH_LINES` lines and :data:`MAX_LOG_BATCH_BYTES` bytes. What is
  over the rate, or finds the buffer full (the broker is slow), is dropped and counted; one
  marker line says how much, when output is accepted again and at the end.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from dataclasses import dataclass

from rung.broker.limits import (
    MAX_LOG_BATCH_BYTES,
    MAX_LOG_BATCH_LINES,
    MAX_LOG_LINE_CHARS,
    TRIAL_LOG_BURST_BYTES,
    TRIAL_LOG_BYTES_PER_S,
)

__all__ = ["READ_CHUNK_BYTES", "LineSplitter", "LogGate", "TokenBucket", "cost", "cut_note"]

# How much of a pipe is read at once: the reader never needs more than this to progress.
READ_CHUNK_BYTES = 64 * 1024
_SEPARATORS = re.compile(r"(\r|\n)")


def cut_note(more_chars: int) -> str:
    """What a cut line ends with."""
    return f" ... [cut: {more_chars} more chars]"


def cost(text: str) -> int:
    """What a line costs against the rate and the batch limits: its UTF-8 bytes and the
    newline (so that empty lines are not free)."""
    return (len(text) if text.isascii() else len(text.encode(errors="replace"))) + 1


class LineSplitter:
    """Bytes of one stream in, complete lines out; see the module's docstring."""

    def __init__(self, max_chars: int = MAX_LOG_LINE_CHARS) -> None:
        self.max_chars = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._head = ""  # the start of the line being read, at most max_chars
        self._more = 0  # how many characters of it are past the head (cut)
        self._cr = False  # the last character seen was a "\r": a "\n" after it ends nothing

    def _add(self, text: str) -> None:
        room = self.max_chars - len(self._head)
        if room > 0:
            self._head += text[:room]
        self._more += max(0, len(text) - max(room, 0))

    def _line(self) -> str:
        line = self._head if not self._more else self._head + cut_note(self._more)
        self._head, self._more = "", 0
        return line

    def _split(self, text: str) -> list[str]:
        lines: list[str] = []
        pieces = _SEPARATORS.split(text)
        # pieces: text, separator, text, separator, ..., text
        for index in range(0, len(pieces) - 1, 2):
            segment, separator = pieces[index], pieces[index + 1]
            if segment:
                self._add(segment)
            elif self._cr and separator == "\n":  # the "\n" of a "\r\n"
                self._cr = False
                continue
            self._cr = separator == "\r"
            if separator == "\r" and not self._head and not self._more:
                continue  # a bare "\r" (a bar about to redraw) is no line
            lines.append(self._line())
        tail = pieces[-1]
        if tail:
            self._cr = False
            self._add(tail)
        return lines

    def feed(self, data: bytes) -> list[str]:
        """The lines that ``data`` completes."""
        return self._split(self._decoder.decode(data))

    def close(self) -> list[str]:
        """The last line, if the stream did not end with a newline."""
        lines = self._split(self._decoder.decode(b"", final=True))
        if self._head or self._more:
            lines.append(self._line())
        return lines


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full at ``now``."""

    rate: float
    burst: float
    now: float
    tokens: float = -1.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, amount: int, now: float) -> bool:
        """Take ``amount`` tokens if there are that many (refilled up to ``now``)."""
        if now > self.now:
            self.tokens = min(self.burst, self.tokens + (now - self.now) * self.rate)
            self.now = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class LogGate:
    """The lines of a trial on their way out: rate-limited, buffered within bounds, batched.

    ``offer`` never blocks and never grows the buffer past ``capacity_bytes``; ``batch``
    takes the next batch for the broker; ``finish`` adds the last marker.
    """

    def __init__(
        self,
        now: float,
        *,
        rate: float = TRIAL_LOG_BYTES_PER_S,
        burst: float = TRIAL_LOG_BURST_BYTES,
        capacity_bytes: int = TRIAL_LOG_BURST_BYTES,
        batch_lines: int = MAX_LOG_BATCH_LINES,
        batch_bytes: int = MAX_LOG_BATCH_BYTES,
    ) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.rate, self.burst = rate, burst
        self.capacity_bytes = capacity_bytes
        self.batch_lines, self.batch_bytes = batch_lines, batch_bytes
        self._buffer: deque[tuple[str, str, int]] = deque()
        self.buffered_bytes = 0
        # Dropped since the last marker, and in all.
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.total_dropped_lines = 0
        self.total_dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def _put(self, stream: str, text: str, size: int) -> None:
        self._buffer.append((stream, text, size))
        self.buffered_bytes += size

    def _marker(self) -> None:
        if not self.dropped_lines:
            return
        text = (
            f"rung: {self.dropped_lines} lines ({self.dropped_bytes} bytes) of output were "
            f"dropped: over the trial's log rate ({int(self.rate)} bytes/s, bursts of "
            f"{int(self.burst)}; TRIAL_LOG_BYTES_PER_S) or while the broker was slow"
        )
        self._put("rung", text, cost(text))  # a marker is never dropped
        self.dropped_lines = self.dropped_bytes = 0

    def offer(self, stream: str, text: str, now: float) -> bool:
        """Accept the line for shipping, or drop and count it; True if accepted."""
        size = cost(text)
        if self.buffered_bytes + size > self.capacity_bytes or not self.bucket.take(size, now):
            self.dropped_lines += 1
            self.dropped_bytes += size
            self.total_dropped_lines += 1
            self.total_dropped_bytes += size
            return False
        self._marker()
        self._put(stream, text, size)
        return True

    def add(self, stream: str, text: str) -> None:
        """A line of Rung's own (a warning about the trial): past the rate, never dropped."""
        self._marker()
        self._put(stream, text, cost(text))

    def finish(self) -> None:
        """The output has ended: say what was dropped since the last marker."""
        self._marker()

    def batch(self) -> list[tuple[str, str]]:
        """The next lines to ship: at most ``batch_lines`` and ``batch_bytes`` (but at
        least one line, if there is any)."""
        lines: list[tuple[str, str]] = []
        size = 0
        while self._buffer and len(lines) < self.batch_lines:
            stream, text, cost_ = self._buffer[0]
            if lines and size + cost_ > self.batch_bytes:
                break
            self._buffer.popleft()
            self.buffered_bytes -= cost_
            size += cost_
            lines.append((stream, text))
        return lines
