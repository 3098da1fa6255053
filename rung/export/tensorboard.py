"""TensorBoard event files without TensorFlow: TFRecord framing and a hand-encoded
``Event`` protobuf.

A file is a sequence of records, each::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian), whose data is one ``tensorflow.Event`` message. Only the fields written
here are encoded (field number, wire type)::

    Event         wall_time    1  double     seconds since the epoch
                  step         2  int64
                  file_version 3  string     "brain.Event:2", in the first event only
                  summary      5  Summary    (file_version and summary are a oneof)
    Summary       value        1  repeated Summary.Value
    Summary.Value tag          1  string
                  simple_value 2  float      (32 bits)

The first event names the file version; with version 2, TensorBoard keeps every event
even when steps go back (a trial restarted from a checkpoint reports some steps again),
instead of purging "orphaned" ones. Then each metric report that has at least one scalar
becomes one event: ``step`` is its ``steps_completed``, ``wall_time`` its
``reported_at``, one value per scalar, tagged ``<group>/<metric name>`` (``training/loss``,
``validation/accuracy``).

Only finite numbers (``int`` or ``float``, not ``bool``) that a 32-bit float holds become
scalars. Everything else is skipped and counted by reason: ``not_a_number`` (a string,
boolean, null, list or mapping), ``not_finite`` (NaN or an infinity, which the Core API
sends as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``) and ``beyond_float32``
(a magnitude above about 3.4e38); a report whose ``steps_completed`` is not below
2**63 (an event's step is an int64) is skipped whole (``step_beyond_int64``, one per
metric). TensorBoard can store NaN, but its charts leave such
points out or lose their scale; the CSV and JSON lines exports keep them.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from rung.export.crc32c import masked_crc32c
from rung.export.tables import NON_FINITE_SPELLINGS

if TYPE_CHECKING:
    from rung.client import MetricReport

__all__ = [
    "FILE_VERSION",
    "EventFile",
    "SkipReason",
    "event_file",
    "event_file_name",
    "file_version_event",
    "read_records",
    "scalar",
    "scalars_event",
    "tfrecord",
]

FILE_VERSION: Final = "brain.Event:2"
SkipReason = Literal["not_a_number", "not_finite", "beyond_float32", "step_beyond_int64"]

_VARINT: Final = 0
_FIXED64: Final = 1
_LENGTH_DELIMITED: Final = 2
_FIXED32: Final = 5
_U64: Final = (1 << 64) - 1


# ---------------------------------------------------------------------- protobuf
def _varint(value: int) -> bytes:
    """A base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _text(value: str) -> bytes:
    """UTF-8, as protobuf strings must be; a lone surrogate (not valid UTF-8 on its own)
    is written as a backslash escape instead."""
    return value.encode("utf-8", "backslashreplace")


def _event_head(wall_time: float, step: int) -> bytes:
    head = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:  # proto3 leaves a zero out
        head += _key(2, _VARINT) + _varint(step)
    return head


def file_version_event(wall_time: float) -> bytes:
    """The first ``Event`` of a file: ``file_version = "brain.Event:2"`` at step 0."""
    return _event_head(wall_time, 0) + _bytes_field(3, _text(FILE_VERSION))


def scalars_event(wall_time: float, step: int, values: Sequence[tuple[str, bytes]]) -> bytes:
    """An ``Event`` whose summary holds one ``simple_value`` per ``(tag, value)``, the value
    already packed as a little-endian 32-bit float (:func:`scalar`)."""
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, _text(tag)) + _key(2, _FIXED32) + packed)
        for tag, packed in values
    )
    return _event_head(wall_time, step) + _bytes_field(5, summary)


# ---------------------------------------------------------------------- TFRecord
def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: length, its masked CRC-32C, data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def read_records(data: bytes) -> list[bytes]:
    """The data of each TFRecord in ``data``, every checksum checked (ValueError on a bad
    one or a truncated record): for tests and tools; TensorBoard has its own reader."""
    records: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise ValueError(f"a TFRecord header at byte {at} is cut short")
        length_bytes = data[at : at + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        if masked_crc32c(length_bytes) != length_crc:
            raise ValueError(f"the TFRecord at byte {at} fails its length checksum")
        end = at + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"the TFRecord at byte {at} is cut short")
        body = data[at + 12 : end]
        (body_crc,) = struct.unpack("<I", data[end : end + 4])
        if masked_crc32c(body) != body_crc:
            raise ValueError(f"the TFRecord at byte {at} fails its data checksum")
        records.append(body)
        at = end + 4
    return records


# ---------------------------------------------------------------------- metrics
def scalar(value: Any) -> bytes | SkipReason:
    """``value`` packed as a little-endian 32-bit float, or why it cannot be a scalar."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        spelled_non_finite = isinstance(value, str) and value in NON_FINITE_SPELLINGS
        return "not_finite" if spelled_non_finite else "not_a_number"
    try:
        number = float(value)  # an int beyond a double's range overflows here
        if not math.isfinite(number):
            return "not_finite"
        return struct.pack("<f", number)  # and beyond a float's here
    except OverflowError:
        return "beyond_float32"


@dataclass(frozen=True, slots=True)
class EventFile:
    """One trial's event file: its bytes, how many scalars it holds, and how many metric
    values were left out, by reason."""

    data: bytes
    scalars: int
    skipped: Counter[str] = field(default_factory=Counter)


def event_file(reports: Iterable[MetricReport], *, created: float) -> EventFile:
    """One trial's reports as an event file (see the module's docstring). The
    file-version event is dated at the earliest report, or at ``created`` if none."""
    reports = list(reports)
    start = min((r.reported_at for r in reports), default=created)
    records = [tfrecord(file_version_event(start))]
    scalars = 0
    skipped: Counter[str] = Counter()
    for report in reports:
        if not 0 <= report.steps_completed < 2**63:
            # An event's step is an int64: a larger one would wrap to a negative step.
            skipped["step_beyond_int64"] += len(report.metrics)
            continue
        values: list[tuple[str, bytes]] = []
        for name, value in report.metrics.items():
            packed = scalar(value)
            if isinstance(packed, bytes):
                values.append((f"{report.group}/{name}", packed))
            else:
                skipped[packed] += 1
        if values:
            records.append(
                tfrecord(scalars_event(report.reported_at, report.steps_completed, values))
            )
            scalars += len(values)
    return EventFile(b"".join(records), scalars, skipped)


def event_file_name(created: float) -> str:
    """``events.out.tfevents.<whole seconds>.rung``: TensorBoard reads any file whose
    name holds ``tfevents``; TensorFlow puts the host name last, Rung its own name."""
    return f"events.out.tfevents.{int(created):d}.rung"
