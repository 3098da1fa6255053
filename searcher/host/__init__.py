"""The experiment host: one experiment's state, log, applied ids, answers and outbox."""

from rung.searcher.host.answers import Answer, Answers
from rung.searcher.host.broken import BrokenExperiment
from rung.searcher.host.host import (
    Applied,
    ExperimentBrokenError,
    ExperimentHost,
    Outgoing,
    experiment_id_for,
)

__all__ = [
    "Answer",
    "Answers",
    "Applied",
    "BrokenExperiment",
    "ExperimentBrokenError",
    "ExperimentHost",
    "Outgoing",
    "experiment_id_for",
]
