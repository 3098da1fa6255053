"""The Python client of Rung: ``rung.Client`` (async) and ``rung.SyncClient``.

    async with rung.Client("amqp://rung:secret@rabbit:5672/") as client:
        experiment = await client.create_experiment("search.yaml", "model/")
        async for event in experiment.watch():
            ...
        print(await experiment.wait(), await experiment.best_trial())

docs/client.md has more examples. Every return value is a typed model below; every
error the client raises on purpose derives from ``ClientError``.
"""

from rung.client._client import Client, Experiment, Trial, lineage_of
from rung.client._models import (
    Change,
    Checkpoint,
    Clone,
    Event,
    ExperimentSummary,
    LogEntry,
    MetricReport,
    TrialSummary,
    WorkerInfo,
)
from rung.client._sync import SyncClient
from rung.searcher.client import (
    ClientError,
    ConnectionLostError,
    NotFoundError,
    RefusedError,
    RequestTimeoutError,
)

__all__ = [
    "Change",
    "Checkpoint",
    "Client",
    "ClientError",
    "Clone",
    "ConnectionLostError",
    "Event",
    "Experiment",
    "ExperimentSummary",
    "LogEntry",
    "MetricReport",
    "NotFoundError",
    "RefusedError",
    "RequestTimeoutError",
    "SyncClient",
    "Trial",
    "TrialSummary",
    "WorkerInfo",
    "lineage_of",
]
