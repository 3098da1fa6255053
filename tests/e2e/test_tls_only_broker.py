"""The amqps set-up of docs/deploy.md, whole: a RabbitMQ node that listens on TLS only
and requires client certificates, made by deploy/tls/make-certs.sh; the searcher, a
worker and the CLI connect with verification and an experiment runs to the end; the
searcher and the worker read their password from a file, as deploy/ runs them. A client
whose certificate comes from another CA is refused, and so is one without a certificate.
Runs in network namespaces (tests/hosts.py): needs root and iproute2, else skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.certs import make_pki
from tests.e2e.conftest import EXAMPLES
from tests.hosts import Hosts, running_hosts
from tests.support import wait_sync

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(600)]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with running_hosts(tmp_path, tls=True) as made:
        yield made


def _probe(
    hosts: Hosts, *, cert: Path | None, key: Path | None
) -> subprocess.CompletedProcess[str]:
    """Connect from the searcher's host with aio-pika over amqps; print what happened."""
    assert hosts.pki is not None
    code = f"""
import asyncio, ssl, aio_pika
async def main():
    context = ssl.create_default_context(cafile={str(hosts.pki.ca)!r})
    if {str(cert) if cert else None!r}:
        context.load_cert_chain({str(cert) if cert else None!r}, {str(key) if key else None!r})
    url = {hosts.url("rung-client")!r}
    connection = await aio_pika.connect(url, ssl_context=context, timeout=10)
    await connection.close()
    print("connected")
asyncio.run(main())
"""
    return subprocess.run(
        hosts.net.run("searcher", [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_experiment_over_tls_only_and_strangers_refused(hosts: Hosts, tmp_path: Path) -> None:
    assert hosts.pki is not None
    # The broker listens on 5671 only; 5672 is closed.
    plain = subprocess.run(
        hosts.net.run("searcher", [sys.executable, "-c", (
            "import socket; s = socket.socket(); s.settimeout(5); "
            f"print(s.connect_ex(({hosts.net.address('broker')!r}, 5672)))"
        )]),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert plain.stdout.strip() != "0", "the broker still listens on plain AMQP"
    # Our client certificate gets in; another CA's, or none, does not.
    assert "connected" in _probe(hosts, cert=hosts.pki.client_cert, key=hosts.pki.client_key).stdout
    other = make_pki(tmp_path / "other-ca", "another ca")
    stranger = _probe(hosts, cert=other.client_cert, key=other.client_key)
    assert "connected" not in stranger.stdout
    assert stranger.returncode != 0
    anonymous = _probe(hosts, cert=None, key=None)
    assert "connected" not in anonymous.stdout
    assert anonymous.returncode != 0
    # The whole flow, verified both ways.
    config = yaml.safe_load((EXAMPLES / "3_hpsearch.yaml").read_text())
    config["searcher"]["max_trials"] = 4
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(config))
    # As deploy/ runs them: the password in a file, the URL naming the user only.
    password = tmp_path / "password"
    password.write_text(hosts.password + "\n")
    password.chmod(0o400)

    def from_file(user: str) -> dict[str, str]:
        url = hosts.url(user).replace(f":{hosts.password}@", "@")
        assert hosts.password not in url
        return {"RUNG_BROKER_URL": url, "RUNG_BROKER_PASSWORD_FILE": str(password)}

    hosts.rung(
        "searcher", "searcher", "rung-searcher",
        "searcher", "--state-dir", str(tmp_path / "state"), "--verify-worker-users",
        **from_file("rung-searcher"),
    )  # fmt: skip
    wait_sync(lambda: "searcher ready" in hosts.log_text("searcher"), 60, "the searcher")
    hosts.rung(
        "w1", "w1", "w1",
        "worker", "--id", "w1", "--slots", "2", "--gpus", "none",
        "--work-dir", str(tmp_path / "w1"),
        **from_file("w1"),
    )  # fmt: skip
    wait_sync(lambda: "worker ready" in hosts.log_text("w1"), 60, "the worker")
    hosts.rung(
        "client", "searcher", "rung-client",
        "experiment", "create", str(path), str(EXAMPLES), "--follow", "--json",
    )  # fmt: skip
    client = hosts.processes["client"]
    client.wait(240)
    assert client.returncode == 0, hosts.log_text("client")[-3000:]
    summary = json.loads((tmp_path / "client.out").read_text())
    assert summary["state"] == "COMPLETED"
    assert len(summary["trials"]) == 4
    for name in ("searcher", "w1"):
        assert "amqps://" in hosts.log_text(name), name
