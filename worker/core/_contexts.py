"""``core_context.searcher``, ``.train`` and ``.preempt``, on a worker and off-cluster.

On a worker each call goes over the local channel; off-cluster (no worker) the same calls
work locally so a script runs standalone, as in Determined.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from rung.worker.core._validate import check_metric, check_metrics

if TYPE_CHECKING:
    from rung.worker.core._distributed import DistributedContext

__all__ = [
    "EarlyExitReason",
    "MemberTransport",
    "PreemptContext",
    "PreemptMode",
    "SearcherContext",
    "SearcherMode",
    "SearcherOperation",
    "TrainContext",
    "Transport",
]

log = logging.getLogger("rung.core")


class Transport(Protocol):
    def request(self, op: str, **fields: Any) -> dict[str, Any]: ...


class MemberTransport:
    """A rank other than the chief's: it talks to no worker. Determined lets only the
    chief report; so does Rung, and says so."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        raise RuntimeError(
            f"only the chief (rank 0) of a distributed trial may {_WHAT.get(op, op)}; this "
            f"is rank {self.rank}: report from rank 0 (if distributed.get_rank() == 0: ...)"
        )


_WHAT = {
    "metrics": "report metrics",
    "progress": "report progress",
    "progress_fraction": "report progress",
    "completed": "report an operation completed",
    "checkpoint": "report a checkpoint",
    "early_exit": "report an early exit",
    "best_validation": "ask for the experiment's best validation",
    "next_op": "ask for operations",
    "should_preempt": "ask whether to stop",
}


def _ranked(dist: DistributedContext | None) -> bool:
    return dist is not None and dist.get_size() > 1


class LocalTransport:
    """Off-cluster: one operation of ``length`` 1, metrics logged, never preempted."""

    def __init__(self) -> None:
        self.served = False

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        if op == "next_op":
            if self.served:
                return {"length": None}
            self.served = True
            return {"length": 1}
        if op in ("metrics", "completed", "progress"):
            log.info("%s: %s", op, fields)
        if op == "should_preempt":
            return {"preempt": False}
        if op == "best_validation":
            return {"value": None}
        return {}


class SearcherMode(enum.Enum):
    WorkersAskChief = "WORKERS_ASK_CHIEF"
    ChiefOnly = "CHEIF_ONLY"


class PreemptMode(enum.Enum):
    WorkersAskChief = "WORKERS_ASK_CHIEF"
    ChiefOnly = "CHIEF_ONLY"
    WorkersAskMaster = "WORKERS_ASK_MASTER"


class EarlyExitReason(enum.Enum):
    INVALID_HP = "EXITED_REASON_INVALID_HP"
    USER_REQUESTED_STOP = "EXITED_REASON_USER_REQUESTED_STOP"


class SearcherOperation:
    """Train to the absolute ``length``, validate, then ``report_completed`` once."""

    def __init__(self, transport: Transport, length: int) -> None:
        self._transport = transport
        self._length = length
        self._completed = False

    @property
    def length(self) -> int:
        return self._length

    def report_progress(self, length: float) -> None:
        if self._completed:
            raise RuntimeError("report_progress() after report_completed() is not allowed")
        self._transport.request("progress", units=float(length))

    def report_completed(self, searcher_metric: Any) -> None:
        if self._completed:
            raise RuntimeError("you may only call op.report_completed() once")
        metric = check_metric(searcher_metric)
        # JSON has no NaN or infinity: an unusable metric travels as null and ranks worst.
        self._transport.request(
            "completed", length=self._length, metric=metric if math.isfinite(metric) else None
        )
        self._completed = True


class SearcherContext:
    def __init__(
        self,
        transport: Transport,
        unit: str | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        self._transport = transport
        self._unit = unit
        self._dist = distributed

    def operations(
        self, searcher_mode: SearcherMode = SearcherMode.WorkersAskChief, auto_ack: bool = True
    ) -> Iterator[SearcherOperation]:
        """The operations, each trained to its absolute ``length``. In a distributed
        trial, ``WorkersAskChief`` (the default): every rank iterates, the chief asks the
        worker and broadcasts each length (None at the end), and only the chief reports;
        ``ChiefOnly``: only the chief iterates."""
        dist = self._dist
        ranked = dist is not None and _ranked(dist)
        chief = dist is None or dist.get_rank() == 0
        if ranked and not chief and searcher_mode is SearcherMode.ChiefOnly:
            raise RuntimeError(
                "SearcherMode.ChiefOnly: only the chief (rank 0) iterates the operations; "
                "use SearcherMode.WorkersAskChief for every rank to get them"
            )
        share = ranked and searcher_mode is SearcherMode.WorkersAskChief
        while True:
            if chief:
                length = self._transport.request("next_op").get("length")
                if share and dist is not None:
                    dist.broadcast(length)
            else:
                assert dist is not None  # noqa: S101 (a member has its context)
                length = dist.broadcast(None)
            if length is None:
                return
            op = SearcherOperation(self._transport, int(length))
            yield op
            if chief and not op._completed:  # noqa: SLF001
                raise RuntimeError("you must call op.report_completed() on each operation")

    def acknowledge_out_of_ops(self) -> None:
        """Nothing to do: the worker sees the clean exit after the last operation."""

    def get_configured_units(self) -> str | None:
        return self._unit


class TrainContext:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def report_metrics(self, group: str, steps_completed: int, metrics: dict[str, Any]) -> None:
        if group not in ("training", "validation"):
            raise ValueError(f"metric group must be 'training' or 'validation', got {group!r}")
        self._transport.request(
            "metrics",
            group=group,
            steps_completed=int(steps_completed),
            metrics=check_metrics(metrics),
        )

    def report_training_metrics(
        self,
        steps_completed: int,
        metrics: dict[str, Any],
        batch_metrics: list[dict[str, Any]] | None = None,
    ) -> None:
        self.report_metrics("training", steps_completed, metrics)

    def report_validation_metrics(self, steps_completed: int, metrics: dict[str, Any]) -> None:
        if any(v is None for v in metrics.values()):
            raise ValueError("validation metrics may not be None")
        self.report_metrics("validation", steps_completed, metrics)

    def report_progress(self, progress: float) -> None:
        if not 0 <= progress <= 1:
            raise ValueError(f"progress must be between 0 and 1, got {progress}")
        self._transport.request("progress_fraction", progress=float(progress))

    def report_early_exit(self, reason: EarlyExitReason) -> None:
        self._transport.request("early_exit", reason=reason.name)

    def get_experiment_best_validation(self) -> float | None:
        value = self._transport.request("best_validation").get("value")
        return None if value is None else float(value)


class PreemptContext:
    def __init__(
        self,
        transport: Transport,
        distributed: DistributedContext | None = None,
        mode: PreemptMode = PreemptMode.WorkersAskChief,
    ) -> None:
        self._transport = transport
        self._dist = distributed
        self._mode = mode

    def should_preempt(self, auto_ack: bool = True) -> bool:
        """Whether to checkpoint and exit now. In a distributed trial with
        ``WorkersAskChief`` (the default) every rank calls it in step and gets the
        chief's answer; with ``ChiefOnly`` only the chief may call it."""
        dist = self._dist
        if dist is None or not _ranked(dist):
            return bool(self._transport.request("should_preempt").get("preempt"))
        if self._mode is PreemptMode.WorkersAskMaster:
            raise RuntimeError(
                "PreemptMode.WorkersAskMaster: in Rung only the chief talks to the worker; "
                "use PreemptMode.WorkersAskChief (every rank gets the chief's answer)"
            )
        chief = dist.get_rank() == 0
        if self._mode is PreemptMode.ChiefOnly:
            if not chief:
                raise RuntimeError(
                    "PreemptMode.ChiefOnly: only the chief (rank 0) may call should_preempt()"
                )
            return bool(self._transport.request("should_preempt").get("preempt"))
        if chief:
            answer = bool(self._transport.request("should_preempt").get("preempt"))
            dist.broadcast(answer)
            return answer
        return bool(dist.broadcast(None))

    def acknowledge_preemption_signal(self) -> None:
        """Nothing to do: the worker expects the exit once it asked for preemption."""
