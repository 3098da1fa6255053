"""``det.core``: the Core API (``init``, contexts, operations)."""

from rung.worker.core import (
    CheckpointContext,
    ClusterInfo,
    Context,
    DistributedContext,
    EarlyExitReason,
    InvalidHP,
    PreemptContext,
    PreemptMode,
    SearcherContext,
    SearcherMode,
    SearcherOperation,
    TrainContext,
    TrialInfo,
    init,
)

__all__ = [
    "CheckpointContext",
    "ClusterInfo",
    "Context",
    "DistributedContext",
    "EarlyExitReason",
    "InvalidHP",
    "PreemptContext",
    "PreemptMode",
    "SearcherContext",
    "SearcherMode",
    "SearcherOperation",
    "TrainContext",
    "TrialInfo",
    "init",
]
