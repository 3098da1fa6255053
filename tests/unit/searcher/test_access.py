"""The searcher's trust model without a broker: roles, reply queues, re-sent messages,
bound attempts, owners and senders in the log, the context path check, custom searchers.

The service runs on the in-memory broker with a ``username`` set, as if a broker vouched
for users; requests are handed to it with the user a broker would have validated."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rung.broker import MemoryBroker, Topology
from rung.broker.archive import pack
from rung.broker.port import Delivery
from rung.broker.schemas import (
    ControlExperiment,
    CreateExperiment,
    DescribeExperiment,
    ExitReason,
    GetContext,
    ListExperiments,
    ProgressReported,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body, Envelope, encode
from rung.searcher.eventlog.records import (
    CreatedRecord,
    InputRecord,
    record_adapter,
)
from rung.searcher.service import requests as requests_module
from rung.searcher.service.access import ORIGINAL_USER_HEADER, Access, Binding, logged_bindings
from rung.searcher.service.creation import CUSTOM_REFUSED
from rung.searcher.service.errors import AccessRefusedError, RequestRefusedError
from rung.searcher.service.service import SearcherService
from rung.searcher.trials import Step

SEARCHER = "rung-searcher"
SINGLE = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "single", "metric": "loss", "max_length": 3},
}
CUSTOM = {
    "entrypoint": "python3 train.py",
    "searcher": {"name": "custom", "class": "my_search:Method", "metric": "loss", "max_length": 3},
}


class _Delivery(Delivery):
    """A delivery handed straight to a handler; remembers how it was settled."""

    outcome: str = ""
    reason: str = ""

    async def ack(self) -> None:
        self.settled, self.outcome = True, "ack"

    async def requeue(self) -> None:
        self.settled, self.outcome = True, "requeue"

    async def _move_to_dead_queue(self, reason: str) -> None:
        self.settled, self.outcome, self.reason = True, "dead", reason


def _delivery(body: Body, user: str | None, **extra: Any) -> _Delivery:
    envelope = Envelope(message_id=extra.pop("message_id", "m-1"), body=body)
    return _Delivery(encode(envelope), message_id=envelope.message_id, user_id=user, **extra)


def _access(**options: Any) -> Access:
    return Access(searcher_user=SEARCHER, admins=frozenset({"root"}), **options)


# ---------------------------------------------------------------------- roles
def test_roles_follow_the_definitions_names_and_what_was_heard() -> None:
    access = _access(workers=frozenset({"gpu-box-1"}))
    assert access.role(SEARCHER) == "searcher"
    assert access.role("root") == "admin"
    assert access.role("rung-operator") == "admin"  # <prefix>operator
    assert access.role("rung-worker") == "worker"  # <prefix>worker, the pool
    assert access.role("gpu-box-1") == "worker"
    assert access.role("alice") == "client"
    assert access.role(None) == "anonymous"  # no user_id, on a broker that vouches
    access.heard_worker("w7")
    assert access.role("w7") == "worker"
    access.heard_worker("root")  # an admin stays an admin
    assert access.role("root") == "admin"
    # Where no broker vouches for anyone (the in-memory broker): one user, all allowed.
    assert Access().role("anyone") == "local"
    assert Access().role(None) == "local"


def test_only_an_owner_or_an_admin_controls_an_experiment() -> None:
    access = _access()
    access.check_owner("alice", "exp-1", "alice", "kill")
    access.check_owner("root", "exp-1", "alice", "kill")
    access.check_owner(SEARCHER, "exp-1", "alice", "kill")
    with pytest.raises(AccessRefusedError) as refused:
        access.check_owner("bob", "exp-1", "alice", "kill")
    assert str(refused.value).startswith(
        "experiment exp-1 belongs to alice; only its owner or an admin may kill it"
    )
    with pytest.raises(AccessRefusedError, match="has no recorded owner"):
        access.check_owner("alice", "exp-2", None, "kill")  # an older log: admins only
    with pytest.raises(AccessRefusedError, match="workers send no client requests"):
        access.check_owner("rung-worker", "exp-1", "alice", "pause")
    with pytest.raises(AccessRefusedError, match="workers may not create"):
        access.check_create("rung-worker")
    with pytest.raises(AccessRefusedError, match="has no user_id"):
        access.check_identified(None)


@pytest.mark.parametrize(
    "reply_to",
    [
        "amq_0123456789abcdef0123456789abcdef",
        "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
        "amq.rabbitmq.reply-to",
        "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAAAA==",
    ],
)
def test_a_private_reply_queue_is_answered(reply_to: str) -> None:
    assert _access().reply_refusal(reply_to, "alice") is None


@pytest.mark.parametrize(
    "reply_to", ["rung.work", "rung.events", "amq_short", "amq.gen-x/../y", "rung.private.3"]
)
def test_any_other_reply_queue_is_refused(reply_to: str) -> None:
    refusal = _access().reply_refusal(reply_to, "alice")
    assert refusal is not None
    assert "is not a private reply queue" in refusal
    # The in-memory broker's private queues, only where no broker vouches.
    assert Access().reply_refusal("rung.private.3", None) is None


def test_a_resent_message_needs_an_operator_and_counts_as_its_original_sender() -> None:
    access = _access()
    body = ListExperiments()
    headers = {ORIGINAL_USER_HEADER: "w1"}
    assert access.sender(_delivery(body, "rung-operator", headers=headers)) == ("w1", None)
    assert access.sender(_delivery(body, "root", headers=dict(headers))) == ("w1", None)
    user, refusal = access.sender(_delivery(body, "w2", headers=dict(headers)))
    assert user == "w2"
    assert refusal is not None
    assert "only an operator may re-send dead letters" in refusal
    _, refusal = access.sender(_delivery(body, "root", headers={ORIGINAL_USER_HEADER: ""}))
    assert refusal == f"header {ORIGINAL_USER_HEADER} must name a broker user"


# ---------------------------------------------------------------------- bindings
def _ids(worker_id: str = "w1", attempt: int = 1) -> dict[str, Any]:
    return {"experiment_id": "exp-1", "trial_id": 1, "attempt": attempt, "worker_id": worker_id}


def test_an_attempt_answers_only_to_the_worker_and_user_that_started_it() -> None:
    access = _access()
    access.bind("exp-1", 1, 1, Binding("w1", "w1"))
    assert access.impostor(ProgressReported(**_ids(), units=1), "w1") is None
    other_user = access.impostor(ProgressReported(**_ids(), units=1), "w2")
    assert other_user is not None
    assert "was started by worker 'w1' (broker user 'w1')" in other_user
    assert access.impostor(ProgressReported(**_ids("w2"), units=1), "w2") is not None
    # A second process of the attempt starting elsewhere: for the run to stop.
    assert access.impostor(TrialStarted(**_ids("w2"), slots=1), "w2") is None
    # Its own worker id under another user: an impostor, trial_started or not.
    assert access.impostor(TrialStarted(**_ids(), slots=1), "w2") is not None
    # Another attempt is not bound by this one; a later binding replaces it.
    assert access.impostor(ProgressReported(**_ids("w2", 2), units=1), "w2") is None
    access.bind("exp-1", 1, 2, Binding("w2", "w2"))
    access.bind("exp-1", 1, 2, Binding("w3", "w3"))  # the first binding of an attempt stays
    assert access.bound("exp-1", 1, 2) == Binding("w2", "w2")
    assert access.bound("exp-1", 1, 1) is None


def test_another_part_of_an_attempt_answers_to_the_user_that_started_it() -> None:
    access = _access()
    access.bind("exp-1", 1, 1, Binding("w1", "w1"))  # the chief's part
    parts = frozenset({"w1", "w2"})
    exited = TrialExited(**_ids("w2"), reason=ExitReason.ERRORED)
    # A part's worker that has not started yet: let through (the run fences it).
    assert access.impostor(exited, "w2", members=parts) is None
    access.bind_member("exp-1", 1, 1, "w2", "w2")
    access.bind_member("exp-1", 1, 1, "w2", "w9")  # the first binding stays
    assert access.impostor(exited, "w2", members=parts) is None
    forged = access.impostor(exited, "w3", members=parts)
    assert forged is not None
    assert "part of trial 1 attempt 1 on worker 'w2' was started by broker user 'w2'" in forged
    # Not a part: refused as before.
    assert access.impostor(TrialExited(**_ids("w4"), reason=ExitReason.ERRORED), "w4") is not None


def test_a_restarted_searcher_binds_each_part_as_its_log_has_it() -> None:
    from .test_gangs import placed_and_running

    run = placed_and_running()  # trial 1 attempt 2: the member's start (w-b) came first
    access = _access()
    logged = [(1, 2, Binding("u-b", "w-b")), (1, 2, Binding("u-a", "w-a"))]
    access.restore("exp-1", logged, run)
    assert access.bound("exp-1", 1, 2) == Binding("u-a", "w-a")  # the chief's
    assert access.member_users == {("exp-1", 1, 2, "w-b"): "u-b"}
    member = TrialExited(**_ids("w-b", 2), reason=ExitReason.ERRORED)
    parts = frozenset({"w-a", "w-b"})
    assert access.impostor(member, "u-b", members=parts) is None
    assert access.impostor(member, "u-x", members=parts) is not None


def test_the_bindings_are_read_back_from_the_log() -> None:
    def started(seq: int, worker: str, sender: str | None, ignored: str | None = None) -> str:
        record = InputRecord(
            seq=seq,
            message_id=f"{worker}/{seq}",
            input=TrialStarted(**_ids(worker), slots=1),
            ignored=ignored,
            sender=sender,
        )
        return record.model_dump_json()

    lines = [
        started(2, "w1", "u1"),
        started(3, "w2", "u2", ignored="trial 1 attempt 1 runs on w1, not on w2"),
        InputRecord(
            seq=4, message_id="x", input=ProgressReported(**_ids(), units=1), sender="u1"
        ).model_dump_json(),
    ]
    records = [record_adapter.validate_json(line) for line in lines]
    assert list(logged_bindings(records)) == [(1, 1, Binding("u1", "w1"))]


# ---------------------------------------------------------------------- the log
def test_owners_and_senders_are_logged_and_older_logs_read_as_none() -> None:
    created = CreatedRecord(
        seq=1, experiment_id="e", config={}, context_hash="0" * 64, checkpoint_root="/c"
    )
    assert "owner" not in json.loads(created.model_dump_json())  # written as before
    owned = created.model_copy(update={"owner": "alice"})
    line = owned.model_dump_json()
    assert json.loads(line)["owner"] == "alice"
    assert record_adapter.validate_json(line) == owned
    record = InputRecord.of(2, "m", None, Step(), sender="w1")
    assert record.sender == "w1"
    assert "sender" not in json.loads(InputRecord.of(3, "n", None, Step()).model_dump_json())


# ---------------------------------------------------------------------- the service
@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SearcherService]:
    """A service on the in-memory broker, as if a broker vouched for users."""
    broker = MemoryBroker(Topology("access"))
    broker.username = SEARCHER
    await broker.start()
    instance = SearcherService(broker, tmp_path / "state", admins=frozenset({"root"}))
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run(stop))
    await asyncio.wait_for(instance.ready.wait(), 10)
    yield instance
    stop.set()
    await task
    await broker.close()


def _create(config: dict[str, Any], tmp_path: Path, files: dict[str, str]) -> CreateExperiment:
    directory = tmp_path / "context"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    data = pack(directory)
    return CreateExperiment(config=config, context_b64=base64.b64encode(data).decode())


async def _handle(service: SearcherService, body: Body, user: str | None) -> dict[str, Any]:
    return await service.requests.handle(body, _delivery(body, user, message_id="r-1"), user)


async def test_requests_are_checked_against_the_owner(
    service: SearcherService, tmp_path: Path
) -> None:
    create = _create(SINGLE, tmp_path, {"train.py": "pass\n"})
    experiment_id = (await _handle(service, create, "alice"))["experiment_id"]
    assert service.owners[experiment_id] == "alice"
    described = await _handle(service, DescribeExperiment(experiment_id=experiment_id), "alice")
    assert described["owner"] == "alice"
    with pytest.raises(AccessRefusedError, match="belongs to alice; only its owner"):
        await _handle(service, ControlExperiment(experiment_id=experiment_id, action="kill"), "bob")
    listed = await _handle(service, ListExperiments(), "bob")
    assert listed == {"experiments": []}
    listed = await _handle(service, ListExperiments(), "root")
    assert [e["owner"] for e in listed["experiments"]] == ["alice"]
    # Bob's create with alice's request key makes bob's own experiment.
    again = create.model_copy(update={"request_key": "k"})
    first = await service.requests.handle(again, _delivery(again, "alice"), "alice")
    second = await service.requests.handle(again, _delivery(again, "bob"), "bob")
    assert first["experiment_id"] != second["experiment_id"]
    assert service.owners[second["experiment_id"]] == "bob"


async def test_a_forged_reply_to_is_dead_lettered_unanswered(service: SearcherService) -> None:
    delivery = _delivery(ListExperiments(), "alice", reply_to="access.work")
    await service.requests.on_rpc(delivery)
    assert delivery.outcome == "dead"
    assert "reply_to 'access.work' is not a private reply queue" in delivery.reason


async def test_the_context_path_stays_in_the_contexts_directory(
    service: SearcherService, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AccessRefusedError, match="not a context hash"):
        await service.requests._check_context("root", "../../x")

    # Even if the name check let it through, the resolved path is checked.
    def naive(contexts_dir: str | Path, digest: str) -> Path:
        return Path(contexts_dir) / f"{digest}.tar.gz"

    monkeypatch.setattr(requests_module, "archive_path", naive)
    with pytest.raises(AccessRefusedError, match="outside the contexts directory"):
        await service.requests._check_context("root", "../../x")
    with pytest.raises(AccessRefusedError, match="outside the contexts directory"):
        await service.requests._check_context("root", "/etc/passwd")


async def test_get_context_is_for_owners_admins_and_workers_with_work(
    service: SearcherService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requests_module, "WORKER_GRACE_S", 0.2)
    create = _create(SINGLE, tmp_path, {"train.py": "pass\n"})
    experiment_id = (await _handle(service, create, "alice"))["experiment_id"]
    digest = service.live(experiment_id).host.run.context_hash
    request = GetContext(context_hash=digest)
    assert "context_b64" in await _handle(service, request, "alice")
    assert "context_b64" in await _handle(service, request, "root")
    assert "context_b64" in await _handle(service, request, "rung-worker")  # work queued
    with pytest.raises(AccessRefusedError, match="may not fetch context"):
        await _handle(service, request, "bob")
    # Once the experiment has no work queued or running, a worker is refused too.
    await _handle(service, ControlExperiment(experiment_id=experiment_id, action="kill"), "alice")
    with pytest.raises(AccessRefusedError, match="may not fetch context"):
        await _handle(service, request, "rung-worker")


async def test_a_custom_searcher_needs_the_admins_leave(
    service: SearcherService, tmp_path: Path
) -> None:
    method = textwrap.dedent("""
        raise SystemExit("imported: the searcher ran the upload's code")
    """)
    create = _create(CUSTOM, tmp_path, {"train.py": "pass\n", "my_search.py": method})
    with pytest.raises(RequestRefusedError) as refused:
        await _handle(service, create, "alice")
    assert str(refused.value) == CUSTOM_REFUSED
    assert "--allow-custom-searchers" in CUSTOM_REFUSED
    # Allowed: the upload's code is imported (here, it refuses to load).
    service.allow_custom_searchers = True
    with pytest.raises(RequestRefusedError, match="imported: the searcher ran"):
        await _handle(service, create, "alice")


async def test_a_restarted_searcher_does_not_import_a_custom_method_it_may_not_run(
    tmp_path: Path,
) -> None:
    from tests.unit.searcher.test_custom import HALVING

    broker = MemoryBroker(Topology("access-custom"))
    broker.username = SEARCHER
    await broker.start()
    state = tmp_path / "state"
    searcher = {"name": "custom", "class": "my_search:Halving", "metric": "loss"}
    config = {**CUSTOM, "searcher": {**searcher, "max_length": 3, "trials": 2}}
    create = _create(config, tmp_path, {"train.py": "pass\n", "my_search.py": HALVING})
    experiment_id = ""  # made with custom searchers allowed, then reopened without
    try:
        for allowed in (True, False):
            service = SearcherService(
                broker, state, admins=frozenset({"root"}), allow_custom_searchers=allowed
            )
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            await asyncio.wait_for(service.ready.wait(), 10)
            if allowed:
                experiment_id = (await _handle(service, create, "alice"))["experiment_id"]
                assert service.live(experiment_id).host.run.state == "ACTIVE"
            else:
                summary = service.summary(experiment_id)
                assert summary.state == "ERROR"
                assert CUSTOM_REFUSED in summary.message
                assert summary.owner == "alice"
            stop.set()
            await task
    finally:
        await broker.close()
