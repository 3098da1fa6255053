"""Hosts on one machine: network namespaces on a bridge, each with its own address, and a
RabbitMQ node of a test's own inside one of them (with Rung's least-privilege
definitions, and TLS only when asked). Needs root and iproute2; callers skip without.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from rung.broker.definitions import ROLES, definitions
from rung.broker.topology import Topology
from tests.certs import Pki, make_pki
from tests.support import stop_processes, wait_sync

ROOT = Path(__file__).resolve().parents[1]
RABBIT_SBIN = Path("/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin")
HOSTS = {"broker": 2, "searcher": 3, "w1": 11, "w2": 12, "w3": 13}


def need_root_and_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("this test makes network namespaces: it needs root and iproute2 (ip netns)")
    if not (RABBIT_SBIN / "rabbitmq-server").exists():
        pytest.skip(f"this test starts a RabbitMQ node of its own: {RABBIT_SBIN} is missing")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Network:
    """A bridge in the root namespace; each host a namespace with a veth on it."""

    tag: str
    subnet: int
    hosts: dict[str, str] = field(default_factory=dict)  # host -> namespace
    cut_off: set[str] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"rb{self.tag}"

    def address(self, host: str) -> str:
        return f"10.{self.subnet}.0.{HOSTS[host]}"

    def outer(self, host: str) -> str:
        return f"rv{self.tag}{HOSTS[host]}"

    def make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for host, number in HOSTS.items():
            namespace = f"rung-{self.tag}-{host}"
            inner = f"ri{self.tag}{number}"
            _ip("netns", "add", namespace)
            self.hosts[host] = namespace
            _ip("link", "add", self.outer(host), "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", namespace)
            _ip("link", "set", self.outer(host), "master", self.bridge)
            _ip("link", "set", self.outer(host), "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def cut(self, host: str) -> None:
        """The host's cable is pulled: no RST, no FIN, nothing gets through."""
        _ip("link", "set", self.outer(host), "down")
        self.cut_off.add(host)

    def remove(self) -> None:
        for namespace in self.hosts.values():
            # Whatever still runs in it (epmd, a cut-off worker's trial) goes first.
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)

    def run(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host], *argv]


@dataclass
class Hosts:
    net: Network
    tmp: Path
    password: str
    pki: Pki | None = None  # the broker listens on TLS only, with these certificates
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    files: list[IO[bytes]] = field(default_factory=list)
    placed: dict[str, str] = field(default_factory=dict)  # process name -> host

    def url(self, user: str) -> str:
        scheme, port = ("amqps", 5671) if self.pki else ("amqp", 5672)
        return f"{scheme}://{user}:{self.password}@{self.net.address('broker')}:{port}/rung"

    def tls_env(self) -> dict[str, str]:
        """What a Rung process needs to verify the broker and be verified by it."""
        if self.pki is None:
            return {}
        return {
            "RUNG_TLS_CA": str(self.pki.ca),
            "RUNG_TLS_CERT": str(self.pki.client_cert),
            "RUNG_TLS_KEY": str(self.pki.client_key),
        }

    def start(self, name: str, host: str, argv: list[str], env: dict[str, str]) -> None:
        """Start a process on a host: stdout to NAME.out, stderr (the logs) to NAME.log."""
        out = (self.tmp / f"{name}.out").open("wb")
        log = (self.tmp / f"{name}.log").open("wb")
        self.files += [out, log]
        self.processes[name] = subprocess.Popen(
            self.net.run(host, argv), stdout=out, stderr=log, env=env, cwd=ROOT
        )
        self.placed[name] = host

    def log_text(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def rung(self, name: str, host: str, user: str, *args: str, **extra: str) -> None:
        env = {
            **os.environ,
            "RUNG_BROKER_URL": self.url(user),
            "RUNG_NAMESPACE": "rung",
            **self.tls_env(),
        }
        self.start(
            name,
            host,
            [sys.executable, "-m", "rung", "--log-format", "json", *args],
            {**env, **extra},
        )


def _rabbit_env(tmp: Path, pki: Pki | None) -> dict[str, str]:
    base = tmp / "rabbitmq"
    (base / "home").mkdir(parents=True)
    cookie = base / "home" / ".erlang.cookie"  # the node's and rabbitmqctl's, made first
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    if pki is None:
        listeners = "listeners.tcp.default = 5672\n"
    else:  # TLS only, and a client certificate from our CA required (docs/deploy.md)
        listeners = (
            "listeners.tcp = none\n"
            "listeners.ssl.default = 5671\n"
            f"ssl_options.cacertfile = {pki.ca}\n"
            f"ssl_options.certfile = {pki.server_cert}\n"
            f"ssl_options.keyfile = {pki.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )
    (base / "rabbitmq.conf").write_text(f"{listeners}loopback_users = none\n")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(base / "home"),
        "RABBITMQ_NODENAME": "rung@localhost",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
    }


@contextlib.contextmanager
def running_hosts(tmp_path: Path, *, tls: bool = False) -> Iterator[Hosts]:
    """The hosts of ``HOSTS`` on a bridge, and a RabbitMQ node on ``broker`` with the
    least-privilege definitions (workers w1, w2 and w3); with ``tls``, it listens on TLS
    only, with certificates from deploy/tls/make-certs.sh."""
    need_root_and_netns()
    net = Network(uuid.uuid4().hex[:5], 100 + secrets.randbelow(100))
    pki = make_pki(tmp_path / "pki", hosts=(net.address("broker"),)) if tls else None
    setup = Hosts(net, tmp_path, secrets.token_urlsafe(12), pki)
    net.make()
    rabbit_env = _rabbit_env(tmp_path, pki)
    ctl = [str(RABBIT_SBIN / "rabbitmqctl"), "-n", "rung@localhost"]
    try:
        setup.start("rabbitmq", "broker", [str(RABBIT_SBIN / "rabbitmq-server")], rabbit_env)

        def node_up() -> bool:
            probe = net.run("broker", [*ctl, "await_startup", "--timeout", "5"])
            done = subprocess.run(
                probe, env=rabbit_env, capture_output=True, timeout=30, check=False
            )
            return done.returncode == 0

        wait_sync(node_up, 120, "the RabbitMQ node in its namespace")
        document = definitions(
            Topology("rung"),
            vhost="rung",
            workers=["w1", "w2", "w3"],
            passwords=dict.fromkeys(ROLES, setup.password),
        )
        path = tmp_path / "definitions.json"
        path.write_text(json.dumps(document))
        subprocess.run(
            net.run("broker", [*ctl, "import_definitions", str(path)]),
            env=rabbit_env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield setup
    finally:
        # Rung's processes first, while the broker is there for them to say goodbye to.
        rung = {n: p for n, p in setup.processes.items() if n != "rabbitmq"}
        # A host cut off cannot drain (its events go nowhere): it just goes.
        cut = [p for n, p in rung.items() if setup.placed.get(n) in net.cut_off]
        stop_processes(cut, kill=True)
        stop_processes([p for p in rung.values() if p not in cut])
        subprocess.run(
            net.run("broker", [*ctl, "stop"]),
            env=rabbit_env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        node = setup.processes.get("rabbitmq")
        if node is not None:
            stop_processes([node])
        for handle in setup.files:
            handle.close()
        net.remove()
