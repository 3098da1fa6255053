"""Where other machines reach this worker: the address a trial's ranks on other workers
dial when this worker runs the chief's part of a trial on several (gang scheduling)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["LOOPBACK", "route_address"]

LOOPBACK = "127.0.0.1"


def route_address(broker_url: str | None) -> str:
    """This machine's address on its route to the broker (the workers that share a
    broker reach each other the same way): the source address the kernel picks for it,
    found without sending anything. The loopback address for a broker on this machine,
    for the in-memory broker (no URL), or when there is no route; ``rung worker
    --address`` overrides it."""
    host = urlsplit(broker_url).hostname if broker_url else None
    if not host or host == "localhost":
        return LOOPBACK
    try:
        if ipaddress.ip_address(host).is_loopback:
            return LOOPBACK
    except ValueError:
        pass  # a name
    try:
        family, _, _, _, target = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(target)  # UDP: picks the route, sends nothing
            address: str = probe.getsockname()[0]
    except OSError:
        return LOOPBACK
    return address
