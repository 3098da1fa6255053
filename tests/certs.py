"""A throwaway public-key infrastructure for TLS tests, made by deploy/tls/make-certs.sh
(so that the script the deployment guide gives is the one the tests use)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """What a broker listening on TLS would use: its certificate, and the CA that
        client certificates must chain to."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return context


SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "tls" / "make-certs.sh"


def make_pki(directory: Path, name: str = "ca", hosts: tuple[str, ...] = ()) -> Pki:
    """A CA, a server certificate (for localhost and 127.0.0.1 unless ``hosts`` says
    otherwise) and a client certificate, made by deploy/tls/make-certs.sh."""
    done = subprocess.run(
        ["bash", str(SCRIPT), str(directory), "--name", f"rung test {name}", "--days", "2", *hosts],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} failed: {done.stderr}")
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
