"""``det.get_cluster_info()``: who this trial is, as its worker told it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["INFO_ENV", "ClusterInfo", "TrialInfo", "get_cluster_info"]

INFO_ENV = "RUNG_TRIAL_INFO"


@dataclass(frozen=True)
class TrialInfo:
    trial_id: int
    experiment_id: str
    trial_seed: int
    hparams: dict[str, Any]
    attempt: int = 1
    unit: str | None = None


@dataclass(frozen=True)
class ClusterInfo:
    trial: TrialInfo
    latest_checkpoint: str | None
    user_data: dict[str, Any] = field(default_factory=dict)
    checkpoint_root: str = ""
    # Where ``latest_checkpoint`` is when it is a warm start's source, saved by another
    # experiment under its own root (``searcher.source_checkpoint_uuid``); None otherwise.
    source_root: str | None = None
    worker_id: str = ""
    slot_ids: list[int] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    task_type: str = "TRIAL"
    # The addresses of the machines that run the trial's processes (the chief's first),
    # this one's place among them, and each one's slots: Determined's fields.
    container_addrs: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    container_rank: int = 0
    container_slot_counts: list[int] = field(default_factory=list)


def get_cluster_info() -> ClusterInfo | None:
    """The running trial's info, or None outside a Rung worker (as in Determined)."""
    raw = os.environ.get(INFO_ENV)
    if not raw:
        return None
    data = json.loads(raw)
    trial = TrialInfo(
        trial_id=int(data["trial_id"]),
        experiment_id=str(data["experiment_id"]),
        trial_seed=int(data["trial_seed"]),
        hparams=dict(data["hparams"]),
        attempt=int(data.get("attempt", 1)),
        unit=data.get("unit"),
    )
    return ClusterInfo(
        trial=trial,
        latest_checkpoint=data.get("latest_checkpoint"),
        user_data=dict(data.get("user_data") or {}),
        checkpoint_root=str(data.get("checkpoint_root", "")),
        source_root=str(data["source_root"]) if data.get("source_root") else None,
        worker_id=str(data.get("worker_id", "")),
        slot_ids=list(data.get("slot_ids", [])),
        gpu_uuids=list(data.get("gpus", [])),
        container_addrs=[str(a) for a in data.get("container_addrs") or ["127.0.0.1"]],
        container_rank=int(data.get("container_rank", 0)),
        container_slot_counts=[
            int(n) for n in data.get("container_slot_counts") or [len(data.get("slot_ids", []))]
        ],
    )
