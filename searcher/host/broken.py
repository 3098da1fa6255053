"""An experiment whose log a restarted searcher could not use.

Its log is corrupt, or its config or search method cannot be built any more (a custom
method's module is gone, a config a newer version refuses). The searcher keeps serving
every other experiment; this one is shown as ERROR with the reason, and a process of one
of its trials that reports anything is told to stop, so that it frees its slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rung.broker.schemas import ExperimentSummary
from rung.searcher.eventlog.reader import read_log
from rung.searcher.eventlog.records import CreatedRecord

__all__ = ["BrokenExperiment"]


@dataclass
class BrokenExperiment:
    experiment_id: str
    path: Path
    reason: str
    name: str | None = None
    request_key: str = ""
    # The trial attempts told to stop already (trial id, attempt).
    stopped: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def of(cls, path: Path, reason: str) -> BrokenExperiment:
        """What can still be read of the experiment at ``path``: its id, name and key."""
        experiment_id, name, key = path.parent.name, None, ""
        try:
            first = read_log(path)[0]
        except Exception:  # noqa: BLE001 (unreadable: the directory names it)
            first = None
        if isinstance(first, CreatedRecord):
            experiment_id, key = first.experiment_id, first.request_key
            raw_name = first.config.get("name")
            name = raw_name if isinstance(raw_name, str) else None
        return cls(experiment_id, path, reason, name=name, request_key=key)

    def summary(self) -> ExperimentSummary:
        return ExperimentSummary(
            experiment_id=self.experiment_id,
            name=self.name,
            state="ERROR",
            progress=0.0,
            trials=[],
            best_trial=None,
            event_log=str(self.path),
            message=f"the experiment could not be recovered: {self.reason}",
        )
