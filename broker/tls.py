"""How a process connects to the broker: the URL and, for ``amqps://``, TLS.

Certificate and host-name checks are on for every ``amqps://`` connection. The server's
certificate is checked against ``ca_file`` (or the system's trust store), and a client
certificate (``cert_file``, ``key_file``) is presented when one is given. Turning the
checks off takes ``insecure_skip_verify=True``, said in so many words: a URL's
``no_verify_ssl=1`` alone is refused, so a copied URL cannot switch them off silently.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import BaseModel, ConfigDict

from rung.broker.errors import BrokerSettingsError

__all__ = ["TlsSettings", "ssl_context_for"]

log = structlog.get_logger("rung.broker")

# The URL query parameters aiormq reads for TLS, and the option each one stands for.
_URL_FILES: Final = {"cafile": "ca_file", "certfile": "cert_file", "keyfile": "key_file"}
_FLAGS: Final = {
    "ca_file": "--tls-ca",
    "cert_file": "--tls-cert",
    "key_file": "--tls-key",
    "insecure_skip_verify": "--tls-insecure-skip-verify",
}


class TlsSettings(BaseModel):
    """TLS options for ``amqps://`` URLs (the ``rung`` flags are in brackets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path | None = None  # [--tls-ca] PEM bundle the broker's certificate must chain to
    cert_file: Path | None = None  # [--tls-cert] this process's certificate (PEM)
    key_file: Path | None = None  # [--tls-key] its private key (PEM)
    insecure_skip_verify: bool = False  # [--tls-insecure-skip-verify] no checks at all

    @property
    def given(self) -> list[str]:
        return [_FLAGS[name] for name, value in self if value not in (None, False)]


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def ssl_context_for(url: str, tls: TlsSettings | None = None) -> ssl.SSLContext | None:
    """The TLS context to connect to ``url`` with; None for a plain ``amqp://`` URL.

    Raises ``BrokerSettingsError`` naming the option and the fix when the settings
    contradict each other, a file cannot be read, or checks would be off implicitly.
    """
    tls = tls or TlsSettings()
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if parts.scheme not in ("amqp", "amqps"):
        raise BrokerSettingsError(
            f"broker URL scheme {parts.scheme!r} is not supported; use amqp://host:5672/ "
            "or amqps://host:5671/ for TLS"
        )
    if parts.scheme == "amqp":
        if tls.given:
            raise BrokerSettingsError(
                f"{', '.join(tls.given)} given for a plain amqp:// URL; TLS needs an "
                "amqps:// URL (the broker's TLS port, 5671 by default)"
            )
        return None
    files = {name: getattr(tls, name) for name in ("ca_file", "cert_file", "key_file")}
    for parameter, name in _URL_FILES.items():
        if parameter in query:
            if files[name] is not None:
                raise BrokerSettingsError(
                    f"the broker URL's {parameter}= and {_FLAGS[name]} both name a file; "
                    "keep one of them"
                )
            files[name] = Path(query[parameter])
    if _truthy(query.get("no_verify_ssl", "0")) and not tls.insecure_skip_verify:
        raise BrokerSettingsError(
            "the broker URL turns certificate checks off (no_verify_ssl=1), which lets "
            "anyone in the path read the credentials and forge messages; remove it and "
            "give the broker's CA with --tls-ca, or pass --tls-insecure-skip-verify if "
            "you really mean to connect unchecked"
        )
    if files["key_file"] is not None and files["cert_file"] is None:
        raise BrokerSettingsError(
            "--tls-key given without --tls-cert; a client certificate needs both"
        )
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise BrokerSettingsError(f"{_FLAGS[name]} {path}: no such file")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files["ca_file"])
        if files["cert_file"] is not None:
            context.load_cert_chain(files["cert_file"], files["key_file"])
    except (ssl.SSLError, OSError) as exc:
        named = ", ".join(f"{_FLAGS[name]} {path}" for name, path in files.items() if path)
        raise BrokerSettingsError(
            f"cannot load the TLS files ({named}): {exc}; they must be PEM files, the key "
            "matching the certificate"
        ) from exc
    if tls.insecure_skip_verify:
        log.warning(
            "TLS certificate checks are OFF (--tls-insecure-skip-verify): the connection "
            "is encrypted but the broker is not authenticated"
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
