"""Every size and format limit of Rung, defined once.

Each limit is checked where the data enters (the Core API, the worker's pipes, the
searcher's decoder, the archive reader) with an error that names it, and the shipped
broker configurations (``deploy/rabbitmq/rabbitmq.conf``, the Kubernetes ConfigMap) set
``max_message_size`` to :data:`BROKER_MAX_MESSAGE_BYTES`, which a test keeps above
:data:`MAX_MESSAGE_BYTES` plus the room AMQP properties take. docs/faults.md lists them.

The chain, largest first::

    BROKER_MAX_MESSAGE_BYTES (the broker refuses more, per message)
      > MAX_MESSAGE_BYTES (one encoded envelope, checked by encode and decode)
        > base64(MAX_CONTEXT_BYTES) + JSON (a create request, a get_context reply)
        > MAX_REPLY_BYTES (the records of one read_records page)
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "BROKER_MAX_MESSAGE_BYTES",
    "CHANNEL_REQUEST_BYTES",
    "CONTEXT_HASH_PATTERN",
    "DEAD_QUEUE_MAX_LENGTH",
    "MAX_CHECKPOINT_METADATA_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_ENTRIES",
    "MAX_CONTEXT_RATIO",
    "MAX_CONTEXT_SECONDS",
    "MAX_CONTEXT_UNPACKED_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LOG_BATCH_BYTES",
    "MAX_LOG_BATCH_LINES",
    "MAX_LOG_LINE_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_METRICS_BYTES",
    "MAX_RANK",
    "MAX_REPLY_BYTES",
    "MAX_SLOTS_PER_TRIAL",
    "MAX_TRIAL_LOG_BYTES",
    "MAX_WORKERS_TRACKED",
    "START_TOKEN_PATTERN",
    "TRIAL_LOG_BURST_BYTES",
    "TRIAL_LOG_BYTES_PER_S",
    "UUID_PATTERN",
    "is_context_hash",
    "is_uuid",
]

MiB: Final = 1024 * 1024
KiB: Final = 1024

# ------------------------------------------------------------------ messages
# What the shipped broker configs set as max_message_size: the broker closes the channel
# of a publisher that sends more (406 PRECONDITION_FAILED).
BROKER_MAX_MESSAGE_BYTES: Final = 48 * MiB
# One encoded envelope, body and all. The room between this and the broker's limit is for
# AMQP properties and headers.
MAX_MESSAGE_BYTES: Final = 40 * MiB
# The records one read_records reply carries at most (it is paged: the client asks again
# after the last one); one record larger than this is sent alone.
MAX_REPLY_BYTES: Final = 4 * MiB
# How deeply JSON may nest in any message, a metric or checkpoint metadata.
MAX_JSON_DEPTH: Final = 64

# ------------------------------------------------------------------ contexts
# The compressed archive (it travels base64-encoded: 4/3 of this, inside a message).
MAX_CONTEXT_BYTES: Final = 24 * MiB
# What it may unpack to, in how many entries, at what expansion ratio, in how much time.
MAX_CONTEXT_UNPACKED_BYTES: Final = 128 * MiB
MAX_CONTEXT_ENTRIES: Final = 20_000
MAX_CONTEXT_RATIO: Final = 200
MAX_CONTEXT_SECONDS: Final = 10.0

# ------------------------------------------------------------------ the Core API
# One metrics report, and one checkpoint's metadata, as JSON.
MAX_METRICS_BYTES: Final = 256 * KiB
MAX_CHECKPOINT_METADATA_BYTES: Final = 64 * KiB
# One request on a trial's Unix socket: above every request the Core API may send.
CHANNEL_REQUEST_BYTES: Final = 1 * MiB

# ------------------------------------------------------------------ trial output
# A line of stdout or stderr longer than this is cut (and says so).
MAX_LOG_LINE_CHARS: Final = 16 * KiB
# One log_lines event carries at most this many lines and bytes.
MAX_LOG_BATCH_LINES: Final = 200
MAX_LOG_BATCH_BYTES: Final = 256 * KiB
# A trial's output is shipped at this rate at most (a token bucket of this burst); what is
# over is dropped and counted, and a marker line says how much.
TRIAL_LOG_BYTES_PER_S: Final = 256 * KiB
TRIAL_LOG_BURST_BYTES: Final = 4 * MiB
# What the searcher keeps of one experiment's trial output (apart from its event log);
# past it, lines are dropped and counted, with a marker line per trial attempt.
MAX_TRIAL_LOG_BYTES: Final = 64 * MiB
# The highest rank a log line may carry (``[rank=N] `` of rung.launch.wrap_rank).
MAX_RANK: Final = 9999

# ------------------------------------------------------------------ scheduling and queues
# The most slots one trial may ask for: the largest work bucket (broker/topology.py).
MAX_SLOTS_PER_TRIAL: Final = 64
# The dead queue holds at most this many letters; past it the oldest are dropped.
DEAD_QUEUE_MAX_LENGTH: Final = 100_000
# The workers the searcher keeps track of; past it the longest silent is forgotten first.
MAX_WORKERS_TRACKED: Final = 4096

# ------------------------------------------------------------------ formats
CONTEXT_HASH_PATTERN: Final = r"^[0-9a-f]{64}$"
UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# A trial attempt's start token (RunTrial, echoed by its TrialStarted).
START_TOKEN_PATTERN: Final = r"^[0-9a-f]{32}$"  # noqa: S105 (a format, not a secret)

_CONTEXT_HASH = re.compile(CONTEXT_HASH_PATTERN)
_UUID = re.compile(UUID_PATTERN)


def is_context_hash(value: str) -> bool:
    """A SHA-256 in lowercase hex: the only name a context has."""
    return _CONTEXT_HASH.fullmatch(value) is not None


def is_uuid(value: str) -> bool:
    """A checkpoint's uuid, in lowercase canonical form (what ``uuid.uuid4()`` prints)."""
    return _UUID.fullmatch(value) is not None
