"""amqps:// for real: a TLS endpoint in front of the local RabbitMQ that checks client
certificates, as a broker with ``ssl_options.verify = verify_peer`` and
``fail_if_no_peer_cert = true`` would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rung.broker import BrokerSettingsError, RabbitBroker, TlsSettings, Topology
from tests.certs import Pki, make_pki
from tests.integration.test_broker_conformance import collect
from tests.proxy import FaultProxy
from tests.support import delete_namespace, unique_prefix, wait_for

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def endpoint(pki: Pki) -> Iterator[FaultProxy]:
    proxy = FaultProxy(tls=pki.server_context()).start()
    yield proxy
    proxy.stop()


def _client_tls(pki: Pki) -> TlsSettings:
    return TlsSettings(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)


async def test_amqps_with_a_ca_a_certificate_and_a_key_carries_messages(
    endpoint: FaultProxy, pki: Pki
) -> None:
    broker = RabbitBroker(endpoint.url(), Topology(unique_prefix()), tls=_client_tls(pki))
    await broker.start()
    try:
        t = broker.topology
        await broker.publish(t.events_exchange, t.EVENTS_KEY, b'{"over": "tls"}', message_id="m1")
        got = await collect(broker, t.events_queue)
        await wait_for(lambda: len(got) == 1, 10, "the message, over TLS")
        assert got[0].body == b'{"over": "tls"}'
    finally:
        await broker.delete_topology()
        await broker.close()
    assert endpoint.connections >= 2  # publishing and consuming each have a connection


async def test_a_broker_certificate_from_another_ca_is_refused_with_the_fix(
    endpoint: FaultProxy, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", "other ca")
    tls = TlsSettings(ca_file=other.ca, cert_file=other.client_cert, key_file=other.client_key)
    broker = RabbitBroker(endpoint.url(), Topology(unique_prefix()), tls=tls)
    with pytest.raises(BrokerSettingsError, match=r"failed the TLS checks.*--tls-ca"):
        await broker.start()


def _rung(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rung", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_the_cli_connects_over_amqps_with_the_tls_options(endpoint: FaultProxy, pki: Pki) -> None:
    namespace = unique_prefix()
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    tls += ["--tls-key", str(pki.client_key)]
    try:
        listed = _rung("dlq", "list", "--broker", endpoint.url(), "--namespace", namespace, *tls)
    finally:
        asyncio.run(delete_namespace(namespace))
    assert listed.returncode == 0, listed.stderr
    assert "the dead-letter queue is empty" in listed.stdout
    assert "connected to the broker" in listed.stderr
    assert "amqps://guest:******@localhost" in listed.stderr  # the password is masked


def test_the_cli_refuses_a_url_that_turns_checks_off(endpoint: FaultProxy) -> None:
    refused = _rung("dlq", "list", "--broker", endpoint.url("no_verify_ssl=1"))
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "--tls-insecure-skip-verify" in refused.stderr
