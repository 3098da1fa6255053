"""The service's errors: each names what was wrong and what to do."""

from __future__ import annotations

from rung.searcher.errors import ConfigProblem, SearcherError

__all__ = [
    "AccessRefusedError",
    "ExperimentNotFoundError",
    "RequestRefusedError",
    "ServiceStoppedError",
]


class RequestRefusedError(SearcherError):
    """A request the searcher will not carry out; ``problems`` say what to fix."""

    def __init__(self, message: str, problems: list[ConfigProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [ConfigProblem("", message)]


class AccessRefusedError(RequestRefusedError):
    """The caller's role does not allow the request; the message names the rule."""


class ExperimentNotFoundError(SearcherError):
    """What a request names does not exist; the message says what."""


class ServiceStoppedError(SearcherError):
    """The searcher failed (its storage): it acknowledges nothing more."""
