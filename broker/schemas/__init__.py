"""Message schemas: the one contract every Rung process shares.

Everything on the wire is an :class:`Envelope` holding one typed body. Bodies are frozen
pydantic models with ``extra="forbid"`` and a ``type`` discriminator; nothing is pickled.
"""

from broker.schemas.commands import (
    CloseTrial,
    ContinueTrial,
    KillTrial,
    PauseTrial,
    PreemptTrial,
    RunTrial,
    WorkerCommand,
)
from broker.schemas.envelope import SCHEMA_VERSION, Body, Envelope, decode, encode
from broker.schemas.events import (
    CheckpointSaved,
    ExitReason,
    LogLine,
    LogLines,
    MetricsReported,
    OpCompleted,
    ProgressReported,
    TrialEvent,
    TrialExited,
    TrialStarted,
    WorkerHeartbeat,
    WorkerLost,
)
from broker.schemas.rpc import (
    ControlExperiment,
    CreateExperiment,
    DescribeExperiment,
    ExperimentSummary,
    GetContext,
    ListExperiments,
    RpcError,
    RpcReply,
    RpcRequest,
    TrialSummary,
)

__all__ = [
    "SCHEMA_VERSION",
    "Body",
    "CheckpointSaved",
    "CloseTrial",
    "ContinueTrial",
    "ControlExperiment",
    "CreateExperiment",
    "DescribeExperiment",
    "Envelope",
    "ExitReason",
    "ExperimentSummary",
    "GetContext",
    "KillTrial",
    "ListExperiments",
    "LogLine",
    "LogLines",
    "MetricsReported",
    "OpCompleted",
    "PauseTrial",
    "PreemptTrial",
    "ProgressReported",
    "RpcError",
    "RpcReply",
    "RpcRequest",
    "RunTrial",
    "TrialEvent",
    "TrialExited",
    "TrialStarted",
    "TrialSummary",
    "WorkerCommand",
    "WorkerHeartbeat",
    "WorkerLost",
    "decode",
    "encode",
]
