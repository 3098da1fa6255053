"""A whole experiment with deploy/rabbitmq's least-privilege users, in real processes:
the searcher, two workers with users of their own, and the CLI as a client user."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import EXAMPLES, ROOT, Cluster, read_log
from tests.least_privilege import LeastPrivilege, least_privilege_vhost
from tests.support import stop_processes

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def lp() -> Iterator[LeastPrivilege]:
    yield from least_privilege_vhost()


@pytest.mark.timeout(300)
def test_an_experiment_completes_with_least_privilege_users(
    lp: LeastPrivilege, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(
        lp.namespace, tmp_path / "state", logs, service_url=lp.url(lp.user("searcher"))
    )
    try:
        cluster.start(
            "searcher",
            "searcher",
            "--state-dir",
            str(cluster.state_dir),
            "--verify-worker-users",
            "--operator",
            lp.user("operator"),
        )
        cluster.wait_log("searcher", "searcher ready")
        for user in lp.workers:  # each worker's id is its user's name
            env = {"RUNG_BROKER_URL": lp.url(user), "RUNG_SEARCHER_USER": lp.user("searcher")}
            cluster.start_worker(user, 2, env=env)
        client = {
            **cluster.env(),
            "RUNG_BROKER_URL": lp.url(lp.user("client")),
            "RUNG_NAMESPACE": lp.namespace,
        }
        create = ["experiment", "create", str(EXAMPLES / "3_hpsearch.yaml"), str(EXAMPLES)]
        done = subprocess.run(
            [sys.executable, "-m", "rung", *create, "--follow", "--json"],
            capture_output=True,
            text=True,
            env=client,
            cwd=ROOT,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["state"] == "COMPLETED"
        assert len(summary["trials"]) == 10
        assert all(t["state"] == "COMPLETED" for t in summary["trials"])
        # Both workers ran trials, each under its own user.
        log = read_log(summary["event_log"])
        started = {
            r["input"]["worker_id"]
            for r in log
            if r.get("kind") == "input" and (r.get("input") or {}).get("type") == "trial_started"
        }
        assert started == set(lp.workers)
        # The operator lists the dead letters (none: nothing went wrong), with its
        # password in a file and none in the URL, nor anywhere in the environment.
        password = tmp_path / "operator-password"
        password.write_text(lp.password + "\n")
        password.chmod(0o400)
        operator = {
            **cluster.env(),
            "RUNG_BROKER_URL": (
                f"amqp://{quote(lp.user('operator'), safe='')}@127.0.0.1:5672/"
                f"{quote(lp.vhost, safe='')}"
            ),
            "RUNG_BROKER_PASSWORD_FILE": str(password),
            "RUNG_NAMESPACE": lp.namespace,
        }
        assert lp.password not in json.dumps(operator)
        listed = subprocess.run(
            [sys.executable, "-m", "rung", "dlq", "list", "--json"],
            capture_output=True,
            text=True,
            env=operator,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr[-3000:]
        assert json.loads(listed.stdout) == []
        # Nobody was refused anything on the way.
        for name in ("searcher", *lp.workers):
            text = cluster.log_text(name)
            assert "ACCESS_REFUSED" not in text, name
            assert "refused event" not in text, name
    finally:
        stop_processes(cluster.processes.values(), grace=60)
        for handle in cluster.files:
            handle.close()
