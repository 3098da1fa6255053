"""TLS settings: checks on unless turned off explicitly; every wrong setting named."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from rung.broker import BrokerSettingsError, TlsSettings, connect_broker
from rung.broker.tls import ssl_context_for
from tests.certs import Pki, make_pki

URL = "amqps://guest:guest@localhost:5671/"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_plain_url_needs_no_context() -> None:
    assert ssl_context_for("amqp://guest:guest@127.0.0.1:5672/") is None


def test_amqps_checks_the_certificate_and_the_host_name_by_default() -> None:
    context = ssl_context_for(URL)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_a_ca_and_a_client_certificate_are_loaded(pki: Pki) -> None:
    tls = TlsSettings(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    context = ssl_context_for(URL, tls)
    assert context is not None
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "rung test ca"),),)]


def test_no_verify_ssl_in_the_url_alone_is_refused() -> None:
    with pytest.raises(BrokerSettingsError, match=r"no_verify_ssl=1.*--tls-insecure-skip-verify"):
        ssl_context_for(URL + "?no_verify_ssl=1")


def test_checks_go_off_only_when_said_explicitly() -> None:
    context = ssl_context_for(URL + "?no_verify_ssl=1", TlsSettings(insecure_skip_verify=True))
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


@pytest.mark.parametrize(
    ("url", "tls", "message"),
    [
        ("http://host/", TlsSettings(), "scheme 'http' is not supported"),
        ("amqp://h/", TlsSettings(ca_file=Path("ca.pem")), "--tls-ca given for a plain amqp://"),
        (URL, TlsSettings(key_file=Path("k.pem")), "--tls-key given without --tls-cert"),
        (URL, TlsSettings(ca_file=Path("/nowhere/ca.pem")), "--tls-ca /nowhere/ca.pem: no such"),
        (URL + "?cafile=/a.pem", TlsSettings(ca_file=Path("b.pem")), "cafile= and --tls-ca both"),
        (URL + "?cafile=/nowhere/a.pem", TlsSettings(), "--tls-ca /nowhere/a.pem: no such file"),
    ],
)
def test_wrong_settings_are_named(url: str, tls: TlsSettings, message: str) -> None:
    with pytest.raises(BrokerSettingsError, match=message):
        ssl_context_for(url, tls)


def test_a_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(BrokerSettingsError, match=f"--tls-ca {junk}.*PEM"):
        ssl_context_for(URL, TlsSettings(ca_file=junk))


def test_tls_options_without_a_broker_url_are_refused() -> None:
    with pytest.raises(BrokerSettingsError, match="--tls-cert given without a broker URL"):
        connect_broker(None, tls=TlsSettings(cert_file=Path("c.pem")))


def test_the_broker_is_checked_when_it_is_made_not_when_it_connects() -> None:
    with pytest.raises(BrokerSettingsError, match="no_verify_ssl"):
        connect_broker(URL + "?no_verify_ssl=true")
