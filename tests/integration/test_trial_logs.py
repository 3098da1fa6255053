"""Trial logs on RabbitMQ: what a trial prints is stored apart from the event log and
read back with ``read_trial_logs``, paged and followed, by the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rung
from rung.searcher.eventlog import InputRecord, read_log
from rung.searcher.eventlog.trial_logs import TRIAL_LOG_FILE
from tests.support import AMQP_URL, delete_namespace, unique_prefix, wait_for_async

pytestmark = pytest.mark.rabbitmq

SCRIPT = """\
import time

import rung as det

with det.core.init() as core_context:
    for op in core_context.searcher.operations():
        for i in range(LINES):
            print(f"line {i}", flush=True)
            if i % 100 == 0:
                time.sleep(0.05)
        op.report_completed(0.5)
"""

LINES = 1500


def _config() -> dict[str, Any]:
    return {
        "name": "chatty",
        "entrypoint": "python3 chatty.py",
        "searcher": {"name": "single", "metric": "x", "max_length": 1},
        "max_restarts": 0,
    }


async def test_trial_logs_are_stored_apart_and_read_paged_and_followed(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "chatty.py").write_text(SCRIPT.replace("LINES", str(LINES)))
    namespace = unique_prefix()
    client = rung.Client.local(tmp_path / "state", broker_url=AMQP_URL, namespace=namespace)
    try:
        async with client:
            await _check(client, context)
    finally:
        await delete_namespace(namespace)


async def _check(client: rung.Client, context: Path) -> None:
    experiment = await client.create_experiment(_config(), context)

    async def has_trial() -> bool:
        return bool(await experiment.trials())

    await wait_for_async(has_trial, 60, "the trial to exist")
    # Followed from while it runs until it ends: every line, once, in order.
    followed = [line async for line in experiment.trial(1).logs(follow=True, poll_s=0.2)]
    printed = [line.text for line in followed if line.stream == "stdout"]
    assert printed == [f"line {i}" for i in range(LINES)]
    assert await experiment.wait(timeout=60) == "COMPLETED"
    # Read again, paged (1,500 lines: two pages at least), the same lines.
    again = [line async for line in experiment.trial(1).logs()]
    assert [line.text for line in again] == [line.text for line in followed]
    assert {line.trial_id for line in again} == {1}
    everything = [line async for line in experiment.logs()]
    assert [line.text for line in everything] == [line.text for line in again]
    with pytest.raises(rung.NotFoundError, match="no trial 7"):
        _ = [line async for line in experiment.trial(7).logs()]
    # The lines are not records of the decision log.
    summary = await experiment.describe()
    records = read_log(Path(summary.event_log))
    inputs = [r.input.type for r in records if isinstance(r, InputRecord) and r.input]
    assert "log_lines" not in inputs
    assert Path(summary.event_log).with_name(TRIAL_LOG_FILE).stat().st_size > 0
