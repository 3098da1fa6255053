"""Every class of hostile input at once, beside a well-behaved experiment that the fault
checker then checks.

A real cluster (a searcher and two workers, each its own process, on RabbitMQ) runs the
fault suite's ASHA experiment. While it runs, the test sends what the other hostile tests
send one class at a time: malformed messages to every consumer queue, an archive bomb, a
config at the edge of its ranges, a tqdm bar and a flood of output, a trial no worker can
fit, and data that is rich markup. Each input must get its clear error, dead letter or
bound within a stated time, and then the well-behaved experiment must pass every
invariant of ``tests/faults/checker.py`` (all trials accounted for, no effect twice,
replay equals live state, every dead letter with a reason that a process logged, ended
within its bound).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from rung.broker import RabbitBroker, Topology
from rung.broker.deadletters import DeadLetter, peek
from rung.broker.schemas import CreateExperiment
from rung.searcher.client import SearcherClient
from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.scenario import TRIALS, finish, start_experiment
from tests.hostile.conftest import HostileTally
from tests.hostile.test_archives import empty_entries
from tests.support import AMQP_URL, wait_sync

pytestmark = pytest.mark.rabbitmq

SCRIPTS = Path(__file__).resolve().parent / "scripts"
# Each hostile input gets its answer within this; the well-behaved experiment ends within
# BOUND_S (it takes about 20 s alone).
ANSWER_S = 30.0
BOUND_S = 240.0

# Raw bytes to every consumer queue of the searcher and the workers: (name, body).
MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"\x00\xff not json"),
    ("not an object", b"[1, 2, 3]"),
    ("wrong schema version", b'{"schema_version": 99, "message_id": "x", "body": {}}'),
    ("unknown type", b'{"schema_version": 1, "message_id": "x", "body": {"type": "pwn"}}'),
    ("100,000 deep", b"[" * 100_000 + b"]" * 100_000),
    (
        "300-char context hash",
        json.dumps(
            {
                "schema_version": 1,
                "message_id": "x",
                "body": {"type": "get_context", "context_hash": "a" * 300},
            }
        ).encode(),
    ),
]


def _routes(t: Topology) -> dict[str, tuple[str, str]]:
    """Where each consumer queue is published to (as the cluster's own broker user)."""
    return {
        "searcher events": (t.events_exchange, t.events_key("guest.hostile")),
        "searcher requests": (t.rpc_exchange, t.RPC_KEY),
        "work queue": (t.commands_exchange, t.work_key(1)),
        "work bucket 2": (t.commands_exchange, t.work_key(2)),
    }


async def _send_malformed(namespace: str) -> dict[str, str]:
    """Publish every malformed body to every queue; the message ids, by input name."""
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="attacker")
    await broker.start()
    sent: dict[str, str] = {}
    try:
        for queue, (exchange, key) in _routes(broker.topology).items():
            for index, (case, body) in enumerate(MALFORMED):
                message_id = f"hostile-{queue.replace(' ', '-')}-{index}"
                await broker.publish(exchange, key, body, message_id=message_id)
                sent[f"{queue}: {case}"] = message_id
    finally:
        await broker.close()
    return sent


async def _dead(namespace: str) -> list[DeadLetter]:
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="reader")
    await broker.start()
    try:
        return await peek(broker, searcher_user="guest", quiet_s=0.3)
    finally:
        await broker.close()


async def _create_raw(namespace: str, config: dict[str, object], archive: bytes) -> str:
    """A create request with a context archive as an attacker sends it; the refusal."""
    broker = RabbitBroker(AMQP_URL, Topology(namespace), name="attacker-client")
    await broker.start()
    try:
        client = SearcherClient(broker)
        request = CreateExperiment(config=config, context_b64=base64.b64encode(archive).decode())
        reply = await client.rpc.call(request, timeout=ANSWER_S)
    finally:
        await broker.close()
    assert not reply.ok
    assert reply.error is not None
    return reply.error.message


def _timed(hostile: HostileTally, cls: str, case: str, outcome: str) -> Callable[[float], None]:
    started = time.monotonic()

    def done(bound_s: float = ANSWER_S) -> None:
        seconds = time.monotonic() - started
        assert seconds <= bound_s, f"{case}: answered after {seconds:.1f} s, over {bound_s} s"
        hostile.record(cls, case, outcome, seconds)

    return done


def _write_config(tmp_path: Path, name: str, config: dict[str, object]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _single(name: str, entrypoint: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "entrypoint": entrypoint,
        "hyperparameters": {"increment_by": 1, "batch_sleep": 0.01},
        "searcher": {"name": "single", "metric": "loss", "max_length": 5},
        "max_restarts": 0,
        **extra,
    }


def _created(cluster: Cluster, config: Path, context: Path) -> str:
    result = cluster.create(config, context, follow=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_well_behaved_experiment_passes_the_checker_beside_every_class(
    tmp_path: Path, hostile: HostileTally
) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.start_worker("w1", 3)
        cluster.start_worker("w2", 2)
        experiment_id = start_experiment(cluster, tmp_path)

        # Malformed messages to every consumer: each dead-lettered once, with a reason.
        started = time.monotonic()
        sent = asyncio.run(_send_malformed(cluster.namespace))
        ids = set(sent.values())
        letters: list[DeadLetter] = []

        def all_dead() -> bool:
            letters[:] = [d for d in asyncio.run(_dead(cluster.namespace)) if d.message_id in ids]
            return {d.message_id for d in letters} >= ids

        wait_sync(all_dead, ANSWER_S, "every malformed message in the dead-letter queue")
        seconds = time.monotonic() - started
        assert len(letters) == len(ids), "a malformed message was dead-lettered twice"
        assert all(d.reason for d in letters)
        for case in sent:
            hostile.record("beside: messages", case, "dead-lettered", seconds)

        # An archive bomb (300,000 empty entries): refused, naming the limit.
        done_bomb = _timed(hostile, "beside: archives", "300,000 empty entries", "refused")
        message = asyncio.run(
            _create_raw(cluster.namespace, _single("bomb", "python3 x.py"), empty_entries())
        )
        assert "MAX_CONTEXT_ENTRIES" in message, message
        done_bomb(ANSWER_S)

        # Configs at the edge of their ranges: refused, naming the field.
        edges: dict[str, dict[str, object]] = {
            "slots_per_trial 65": {"resources": {"slots_per_trial": 65}},
            "log base overflow": {
                "hyperparameters": {"lr": {"type": "log", "base": 10, "minval": -5, "maxval": 400}}
            },
        }
        for case, extra in edges.items():
            done_cfg = _timed(hostile, "beside: configs", case, "refused")
            path = _write_config(
                tmp_path, "edge", _single("edge", "python3 3_hpsearch.py", **extra)
            )
            refused = cluster.create(path, SCRIPTS, follow=False)
            assert refused.returncode != 0, refused.stdout
            assert "slots_per_trial" in refused.stderr or "lr" in refused.stderr, refused.stderr
            done_cfg(ANSWER_S)

        # Hostile scripts, each an experiment: a tqdm bar and a flood; and a trial that no
        # worker can fit (7 slots; the workers have 3 and 2, and no gang of them holds
        # it): it waits, with its reason.
        bar = _created(
            cluster,
            _write_config(tmp_path, "bar", _single("bar", "python3 tqdm_bar.py 5000")),
            SCRIPTS,
        )
        flood = _created(
            cluster,
            _write_config(tmp_path, "flood", _single("flood", "python3 flood.py 50")),
            SCRIPTS,
        )
        wide = _created(
            cluster,
            _write_config(
                tmp_path,
                "wide",
                _single(
                    "[/]wide[link=https://evil.example]x[/link]",
                    "python3 tqdm_bar.py 10",
                    resources={"slots_per_trial": 7},
                ),
            ),
            SCRIPTS,
        )
        done_wide = _timed(hostile, "beside: scheduling", "7 slots, largest worker 3", "contained")
        wait_sync(
            lambda: any("needs 7 slots" in w for w in cluster.describe(wide)["waiting"]),
            ANSWER_S,
            "the wide experiment's waiting reason",
        )
        done_wide(ANSWER_S)
        # Its name is markup: every listing prints it as it is.
        listed = cluster.rung("experiment", "list")
        assert listed.returncode == 0, listed.stderr
        assert "[/]wide" in listed.stdout
        hostile.record("beside: display", "an experiment named [/]...[link=...]", "contained")

        for name, hostile_id in (("tqdm bar", bar), ("flood", flood)):
            done_script = _timed(hostile, "beside: scripts", name, "contained")
            waited = cluster.rung("experiment", "wait", hostile_id, "--json", timeout=BOUND_S)
            assert json.loads(waited.stdout)["state"] == "COMPLETED", waited.stdout
            done_script(BOUND_S)

        # The well-behaved experiment: every invariant of the fault checker.
        report = finish(cluster, experiment_id, None, bound_s=BOUND_S, planned_trials=TRIALS)
        assert report.summary["state"] == "COMPLETED"
        assert cluster.rung("experiment", "kill", wide).returncode == 0
