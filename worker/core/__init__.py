"""The Core API, Determined 0.37-compatible: ``import rung as det``.

Inside a trial run by a Rung worker every call goes to the worker over a local channel;
outside one, ``init()`` returns local stand-ins so the script runs standalone.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from rung.worker.core._channel import Channel
from rung.worker.core._checkpoint import CheckpointContext
from rung.worker.core._contexts import (
    EarlyExitReason,
    LocalTransport,
    MemberTransport,
    PreemptContext,
    PreemptMode,
    SearcherContext,
    SearcherMode,
    SearcherOperation,
    TrainContext,
    Transport,
)
from rung.worker.core._distributed import DistributedContext, DistributedError
from rung.worker.core._info import ClusterInfo, TrialInfo, get_cluster_info
from rung.worker.core._sharded import ShardedCheckpointError

__all__ = [
    "CHANNEL_ENV",
    "CHANNEL_TOKEN_ENV",
    "LOG_FORMAT",
    "CheckpointContext",
    "ClusterInfo",
    "Context",
    "DistributedContext",
    "DistributedError",
    "EarlyExitReason",
    "InvalidHP",
    "PreemptContext",
    "PreemptMode",
    "SearcherContext",
    "SearcherMode",
    "SearcherOperation",
    "ShardedCheckpointError",
    "TrainContext",
    "TrialInfo",
    "get_cluster_info",
    "init",
]

CHANNEL_ENV = "RUNG_CHANNEL"
CHANNEL_TOKEN_ENV = "RUNG_CHANNEL_TOKEN"  # noqa: S105 (the variable's name)
LOG_FORMAT = "%(levelname)s: [%(process)s] %(name)s: %(message)s"


class InvalidHP(Exception):  # noqa: N818 (Determined's name)
    """Raise inside ``with det.core.init()`` when the hyperparameters cannot work."""


class Context:
    def __init__(
        self,
        transport: Transport,
        info: ClusterInfo | None,
        checkpoint_root: Path,
        channel: Channel | None,
        *,
        distributed: DistributedContext | None = None,
        preempt_mode: PreemptMode = PreemptMode.WorkersAskChief,
    ) -> None:
        self.info = info
        self.distributed = distributed if distributed is not None else DistributedContext()
        self._transport = transport
        self._channel = channel
        self.train = TrainContext(transport)
        unit = info.trial.unit if info else None
        self.searcher = SearcherContext(transport, unit, self.distributed)
        self.preempt = PreemptContext(transport, self.distributed, preempt_mode)

        def report(storage_id: str, steps: int, metadata: dict[str, Any], size: int) -> None:
            transport.request(
                "checkpoint",
                uuid=storage_id,
                steps_completed=steps,
                metadata=metadata,
                size_bytes=size,
            )

        source_root = info.source_root if info is not None else None
        self.checkpoint = CheckpointContext(
            checkpoint_root,
            report,
            source_root=source_root,
            distributed=self.distributed,
        )

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, InvalidHP):
            logging.getLogger("rung.core").warning("trial raised InvalidHP: %s", value)
            if not isinstance(self._transport, MemberTransport):  # the chief tells
                self.train.report_early_exit(EarlyExitReason.INVALID_HP)
            self.close()
            sys.exit(0)
        self.close()

    def close(self) -> None:
        self.distributed.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def init(
    *,
    distributed: DistributedContext | None = None,
    checkpoint_storage: str | dict[str, Any] | None = None,
    preempt_mode: PreemptMode = PreemptMode.WorkersAskChief,
    tensorboard_mode: Any = None,
) -> Context:
    """The Core API context: use as ``with det.core.init() as core_context:``."""
    info = get_cluster_info()
    path = os.environ.get(CHANNEL_ENV)
    if info is None or not path:
        root = Path(
            checkpoint_storage
            if isinstance(checkpoint_storage, str)
            else os.environ.get("RUNG_CHECKPOINT_DIR", Path.home() / ".rung" / "local-checkpoints")
        )
        return Context(
            LocalTransport(), None, root, None, distributed=distributed, preempt_mode=preempt_mode
        )
    if distributed is None and (len(info.container_addrs) > 1 or len(info.slot_ids) > 1):
        raise ValueError(
            "you must provide a valid DistributedContext for a multi-slot task: this trial "
            f"has {len(info.slot_ids)} slots; start a process per slot (python -m "
            "rung.launch.torch_distributed -- CMD) and pass det.core.init(distributed="
            "det.core.DistributedContext.from_torch_distributed()), or ask for one slot"
        )
    if distributed is not None and distributed.get_rank() != 0:
        # Only the chief talks to the worker: the other ranks get operations and
        # preemption from it, and may not report (Determined's rule).
        member = MemberTransport(distributed.get_rank())
        return Context(
            member,
            info,
            Path(info.checkpoint_root),
            None,
            distributed=distributed,
            preempt_mode=preempt_mode,
        )
    channel = Channel(path, os.environ.get(CHANNEL_TOKEN_ENV, ""))
    return Context(
        channel,
        info,
        Path(info.checkpoint_root),
        channel,
        distributed=distributed,
        preempt_mode=preempt_mode,
    )
