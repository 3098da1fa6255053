"""A real trial hunts for its worker's broker password, with both start methods.

The worker is a real ``rung worker`` process on RabbitMQ, logged in as a broker user of
this test's own whose password is a fresh marker. The trial
(``scripts/hunt_credentials.py``) reads its own environment, ``/proc/self/environ``, the
``environ``, ``cmdline``, ``maps`` and ``mem`` of the fork server and the worker, the
``environ`` and ``cmdline`` of every process it can see, and the password file. Two set-ups:

* **same uid**: the worker runs as an unprivileged user with the password in its own
  environment (the worst case: ``RUNG_BROKER_URL`` with the password), and so do its
  trials. The worker and the fork server are non-dumpable: the trial reads nothing.
* **trial user**: the worker runs as root with ``--broker-password-file`` (mode 0600) and
  ``--trial-user``: the trial runs as that user and cannot open the file.

Each place tried is recorded in the ``hostile`` tally (class ``credentials``) as
``contained`` once the marker is shown absent from what the trial read; the experiment
completes beside it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import yaml

from rung.worker.privileges import TrialUser
from tests.e2e.conftest import ROOT, Cluster, running_cluster
from tests.hostile.conftest import HostileTally
from tests.support import AMQP_URL, RUN_ID
from tests.users import home_for, is_root, other_user, python_for_others, shared_dir

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not is_root(), reason="switches users: needs root"),
]

HUNTER = Path(__file__).resolve().parent / "scripts" / "hunt_credentials.py"
CLASS = "credentials"


def _ctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")


_BROKER = urlsplit(AMQP_URL)
_VHOST = unquote(_BROKER.path[1:]) or "/"


@pytest.fixture
def broker_user() -> Iterator[tuple[str, str]]:
    """A broker user of this test's own, whose password is the marker to hunt for."""
    name = f"rungtest-{RUN_ID}-cred-{uuid.uuid4().hex[:6]}"
    password = f"marker{secrets.token_hex(12)}"
    _ctl("add_user", name, password)
    try:
        _ctl("set_permissions", "-p", _VHOST, name, ".*", ".*", ".*")
        yield name, password
    finally:
        _ctl("delete_user", name)


@pytest.fixture(scope="module")
def user() -> Iterator[TrialUser]:
    with other_user() as made:
        yield made


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


@pytest.fixture(scope="module")
def python(user: TrialUser, scratch: Path) -> tuple[str, dict[str, str]]:
    found = python_for_others(user, scratch)
    if found is None:
        pytest.skip("no Python interpreter that another user can run with Rung importable")
    return found


def _url(name: str, password: str | None) -> str:
    secret = "" if password is None else f":{quote(password, safe='')}"
    host = f"{_BROKER.hostname}:{_BROKER.port or 5672}"
    return f"amqp://{quote(name, safe='')}{secret}@{host}/{quote(_VHOST, safe='')}"


def _start_worker(
    cluster: Cluster,
    python: tuple[str, dict[str, str]],
    worker_id: str,
    *args: str,
    env: dict[str, str],
    run_as: TrialUser | None,
) -> subprocess.Popen[bytes]:
    executable, extra = python
    log = (cluster.logs / f"{worker_id}.log").open("wb")
    cluster.files.append(log)
    switch: dict[str, Any] = (
        {} if run_as is None else {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    )
    process = subprocess.Popen(
        [executable, "-m", "rung", "--log-format", "json", "worker", "--id", worker_id, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            "PATH": os.environ["PATH"],
            **extra,
            "RUNG_NAMESPACE": cluster.namespace,
            **env,
        },
        cwd=ROOT,
        **switch,
    )
    cluster.processes[worker_id] = process
    cluster.wait_log(worker_id, "worker ready")
    return process


def _run_hunter(cluster: Cluster, tmp_path: Path, out: Path, secret: str) -> dict[str, Any]:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hunt_credentials.py").write_text(HUNTER.read_text())
    config = tmp_path / "hunt.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "hostile-credentials",
                "entrypoint": "python3 hunt_credentials.py",
                "hyperparameters": {
                    "out": {"type": "const", "val": str(out)},
                    "secret": {"type": "const", "val": secret},
                },
                "searcher": {"name": "single", "metric": "x", "max_length": 1},
                "max_restarts": 0,
            }
        )
    )
    result = cluster.create(config, context)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "COMPLETED", summary  # the well-behaved side completes
    found: dict[str, Any] = json.loads((out / "found.json").read_text())
    return found


def _kind(what: str, method: str) -> str:
    """The place a read went to: the fork server, the worker, another ancestor."""
    if not what.startswith("ancestor "):
        return what
    _, depth, part = what.split()
    names = ["fork server", "worker"] if method == "fork-server" else ["worker"]
    index = int(depth) - 1
    owner = names[index] if index < len(names) else "other ancestors"
    return f"{owner} /proc {part}"


def _check_and_record(
    found: dict[str, Any], marker: str, hostile: HostileTally, setup: str, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """No read holds the marker; each kind of place tried is recorded as contained."""
    method = setup.rsplit(", ", 1)[1]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for entry in found["reads"]:
        by_kind.setdefault(_kind(str(entry["what"]), method), []).append(entry)
    leaks = [(e["what"], e.get("path")) for e in found["reads"] if marker in str(e.get("text", ""))]
    assert leaks == []
    for kind, entries in sorted(by_kind.items()):
        outcomes = sorted({str(e["outcome"]) for e in entries})
        hostile.record(
            CLASS,
            f"{setup}: {kind} ({len(entries)} tried: {'/'.join(outcomes)}; no password)",
            "contained",
            seconds,
        )
    return by_kind


def _outcome(by_kind: dict[str, list[dict[str, Any]]], kind: str) -> str:
    (entry,) = by_kind[kind]
    return str(entry["outcome"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["fork-server", "exec"])
def test_a_same_uid_trial_finds_no_password(
    method: str,
    broker_user: tuple[str, str],
    user: TrialUser,
    python: tuple[str, dict[str, str]],
    scratch: Path,
    tmp_path: Path,
    hostile: HostileTally,
) -> None:
    name, marker = broker_user
    home = home_for(user, scratch)
    out = home / "out"
    out.mkdir()
    os.chown(out, user.uid, user.gid)
    with running_cluster(tmp_path, "--worker-user", name) as cluster:
        _start_worker(
            cluster,
            python,
            f"{name}.same-uid",
            *("--slots", "1", "--gpus", "none"),
            *("--work-dir", str(home / "work"), "--start-method", method),
            # The searcher runs as the test broker's own user (guest, say).
            env={
                "HOME": str(home),
                "RUNG_BROKER_URL": _url(name, marker),
                "RUNG_SEARCHER_USER": _searcher_user(),
            },
            run_as=user,
        )
        started = time.monotonic()
        found = _run_hunter(cluster, tmp_path, out, "")
        seconds = time.monotonic() - started
    assert found["uid"] == user.uid
    by_kind = _check_and_record(found, marker, hostile, f"same uid, {method}", seconds)
    # The worker (and the fork server) run as the trial's uid, yet are closed to it.
    closed = [f"worker /proc {part}" for part in ("environ", "mem", "maps")]
    if method == "fork-server":
        closed += [f"fork server /proc {part}" for part in ("environ", "mem", "maps")]
    assert {_outcome(by_kind, k) for k in closed} == {"PermissionError"}
    assert _outcome(by_kind, "own /proc/self/environ") == "read"  # its own: readable, clean


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["fork-server", "exec"])
def test_a_trial_user_cannot_read_the_password_file(
    method: str,
    broker_user: tuple[str, str],
    user: TrialUser,
    python: tuple[str, dict[str, str]],
    scratch: Path,
    tmp_path: Path,
    hostile: HostileTally,
) -> None:
    name, marker = broker_user
    secret = tmp_path / "secrets" / "broker-password"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(marker + "\n")
    secret.chmod(0o600)
    out = home_for(user, scratch) / "out"
    work = scratch / f"work-{uuid.uuid4().hex[:6]}"  # the worker's, under a shared place
    out.mkdir()
    os.chown(out, user.uid, user.gid)
    with running_cluster(tmp_path, "--worker-user", name) as cluster:
        worker_id = f"{name}.trial-user"
        _start_worker(
            cluster,
            python,
            worker_id,
            *("--slots", "1", "--gpus", "none"),
            *("--work-dir", str(work), "--start-method", method),
            *("--trial-user", user.name),
            env={
                "HOME": str(tmp_path),
                "RUNG_BROKER_URL": _url(name, None),
                "RUNG_BROKER_PASSWORD_FILE": str(secret),
                "RUNG_SEARCHER_USER": _searcher_user(),
            },
            run_as=None,
        )
        started = time.monotonic()
        found = _run_hunter(cluster, tmp_path, out, str(secret))
        seconds = time.monotonic() - started
        log = cluster.log_text(worker_id)
    assert found["uid"] == user.uid
    by_kind = _check_and_record(found, marker, hostile, f"trial user, {method}", seconds)
    assert _outcome(by_kind, "password file") == "PermissionError"
    assert _outcome(by_kind, "worker /proc environ") == "PermissionError"
    assert marker not in log  # nor does the worker log it


def _searcher_user() -> str:
    """The broker user the test cluster's searcher logs in as (the tests' own URL's)."""
    return urlsplit(AMQP_URL).username or "guest"
