"""A small async client of the searcher service (the full ``rung.Client`` builds on it)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from broker.archive import pack
from broker.port import Broker
from broker.rpc import RpcClient
from broker.schemas import (
    ControlExperiment,
    CreateExperiment,
    DescribeExperiment,
    ExperimentSummary,
    ListExperiments,
    RpcReply,
)
from searcher.config import load_config_file
from searcher.errors import ConfigError, ConfigProblem, SearcherError

__all__ = ["TERMINAL_STATES", "ExperimentNotFoundError", "SearcherClient"]

TERMINAL_STATES = ("COMPLETED", "ERROR", "CANCELED")


class ExperimentNotFoundError(SearcherError, KeyError):
    """No experiment with that id on this searcher."""


def _read_config(path: Path) -> dict[str, Any]:
    load_config_file(path)
    raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return raw


def _result(reply: RpcReply) -> dict[str, Any]:
    if reply.ok and reply.result is not None:
        return reply.result
    error = reply.error
    if error is not None and error.kind == "refused":
        raise ConfigError(
            [ConfigProblem("", p) for p in error.problems] or [ConfigProblem("", error.message)]
        )
    if error is not None and error.kind == "not_found":
        raise ExperimentNotFoundError(error.message)
    raise SearcherError(error.message if error else "empty reply from the searcher")


class SearcherClient:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.rpc = RpcClient(broker)

    async def create_experiment(
        self, config: str | Path | dict[str, Any], context_dir: str | Path
    ) -> dict[str, Any]:
        """Validate the config here, send it with the packed context; return the id."""
        if isinstance(config, dict):
            raw, source = config, ""
        else:
            # Fail fast, with the same errors the searcher would give, before any upload.
            raw, source = await asyncio.to_thread(_read_config, Path(config)), str(config)
        data = await asyncio.to_thread(pack, context_dir)
        request = CreateExperiment(
            config=raw, context_b64=base64.b64encode(data).decode(), config_source=source
        )
        return _result(await self.rpc.call(request, timeout=120))

    async def describe(self, experiment_id: str) -> ExperimentSummary:
        reply = await self.rpc.call(DescribeExperiment(experiment_id=experiment_id))
        return ExperimentSummary.model_validate(_result(reply))

    async def control(
        self, experiment_id: str, action: Literal["pause", "activate", "cancel", "kill"]
    ) -> dict[str, Any]:
        """Pause, activate, cancel (trials checkpoint first) or kill an experiment.

        Returns its state after the action, and ``ignored``: why the action changed
        nothing (pausing a paused experiment, say), or None.
        """
        request = ControlExperiment(experiment_id=experiment_id, action=action)
        return _result(await self.rpc.call(request))

    async def list_experiments(self) -> list[ExperimentSummary]:
        result = _result(await self.rpc.call(ListExperiments()))
        return [ExperimentSummary.model_validate(e) for e in result["experiments"]]

    async def wait(
        self,
        experiment_id: str,
        *,
        poll_s: float = 0.5,
        timeout: float | None = None,
        on_update: Callable[[ExperimentSummary], None] | None = None,
    ) -> ExperimentSummary:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            summary = await self.describe(experiment_id)
            if on_update is not None:
                on_update(summary)
            if summary.state in TERMINAL_STATES:
                return summary
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"experiment {experiment_id} is still {summary.state} after {timeout} s"
                )
            await asyncio.sleep(poll_s)
