"""Exceptions raised by the searcher package.

Every error the package raises on purpose derives from :class:`SearcherError`::

    SearcherError
    ├── ConfigError (also ValueError)        the config breaks rules; lists every problem
    ├── SearchMethodError                    a search method broke the method interface
    │   └── CustomSearcherError              a custom search method could not be loaded
    ├── SimulationError (also ValueError)    the simulator cannot run the given inputs
    └── ClientError                          a client's request to the searcher failed
        ├── NotFoundError (also KeyError)            no such experiment or trial
        ├── RequestTimeoutError (also TimeoutError)  no answer in time
        ├── RefusedError (also ConfigError)          refused; lists every problem, by field
        └── ConnectionLostError (also ConnectionError)  the broker cannot be reached

Messages state the rule that was broken, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ClientError",
    "ConfigError",
    "ConfigProblem",
    "ConnectionLostError",
    "CustomSearcherError",
    "NotFoundError",
    "RefusedError",
    "RequestTimeoutError",
    "SearchMethodError",
    "SearcherError",
    "SimulationError",
    "UnknownRulesError",
]


class SearcherError(Exception):
    """Root of every error the searcher package raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One broken rule in an experiment config: where, and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(SearcherError, ValueError):
    """The experiment config is invalid. ``problems`` lists every broken rule."""

    def __init__(self, problems: list[ConfigProblem], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        where = f" ({source})" if source else ""
        count = len(self.problems)
        head = f"invalid experiment config{where}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class SearchMethodError(SearcherError):
    """A search method returned an operation that breaks the interface's rules."""


class CustomSearcherError(SearchMethodError):
    """A ``custom`` searcher's class could not be found, imported or built."""


class UnknownRulesError(SearcherError, ValueError):
    """An experiment's log names a revision of the search methods' rules that this Rung
    does not know: a newer Rung wrote it."""


class SimulationError(SearcherError, ValueError):
    """The simulator cannot run with the given config, benchmark or curves."""


class ClientError(SearcherError):
    """Root of every error a client of the searcher raises on purpose."""


class NotFoundError(ClientError, KeyError):
    """No experiment or trial with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class RequestTimeoutError(ClientError, TimeoutError):
    """The searcher did not answer in time (or an experiment did not end in time)."""


class RefusedError(ConfigError, ClientError):
    """The searcher refused the request. ``problems`` lists every broken rule, each with
    the field it is about (``path``) and what to do (``message``)."""


class ConnectionLostError(ClientError, ConnectionError):
    """The broker cannot be reached, or the connection to it is gone."""
