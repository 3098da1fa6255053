"""Rung: distributed hyperparameter search with a Determined-compatible Core API.

A Determined 0.37 training script runs on Rung with its import changed to
``import rung as det``. The Python client is here too: ``rung.Client`` (async) and
``rung.SyncClient``; it is imported on first use, so training processes never load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rung import core
from rung.worker.core import LOG_FORMAT, ClusterInfo, InvalidHP, TrialInfo, get_cluster_info

if TYPE_CHECKING:
    from rung.broker import TlsSettings
    from rung.client import (
        Checkpoint,
        Client,
        ClientError,
        ConnectionLostError,
        Event,
        Experiment,
        ExperimentSummary,
        LogEntry,
        MetricReport,
        NotFoundError,
        RefusedError,
        RequestTimeoutError,
        SyncClient,
        Trial,
        TrialSummary,
        WorkerInfo,
    )

__all__ = [
    "LOG_FORMAT",
    "Checkpoint",
    "Client",
    "ClientError",
    "ClusterInfo",
    "ConnectionLostError",
    "Event",
    "Experiment",
    "ExperimentSummary",
    "InvalidHP",
    "LogEntry",
    "MetricReport",
    "NotFoundError",
    "RefusedError",
    "RequestTimeoutError",
    "SyncClient",
    "TlsSettings",
    "Trial",
    "TrialInfo",
    "TrialSummary",
    "WorkerInfo",
    "core",
    "get_cluster_info",
]

_CLIENT = frozenset(__all__) - {"LOG_FORMAT", "InvalidHP", "core", "get_cluster_info"}


def __getattr__(name: str) -> Any:
    if name == "TlsSettings":
        return importlib.import_module("rung.broker").TlsSettings
    if name in _CLIENT:
        return getattr(importlib.import_module("rung.client"), name)
    raise AttributeError(f"module 'rung' has no attribute {name!r}")
