"""A fresh vhost on the local RabbitMQ with Rung's definitions imported: the topology and
the least-privilege users of ``broker.definitions``, with known passwords."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from rung.broker.definitions import ROLES, definitions
from rung.broker.topology import Topology
from tests.support import RUN_ID


@dataclass(frozen=True)
class LeastPrivilege:
    vhost: str
    namespace: str
    users_prefix: str
    workers: tuple[str, ...]
    password: str

    def user(self, role: str) -> str:
        return f"{self.users_prefix}{role}"

    def url(self, user: str) -> str:
        return (
            f"amqp://{quote(user, safe='')}:{quote(self.password, safe='')}"
            f"@127.0.0.1:5672/{quote(self.vhost, safe='')}"
        )

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)


def _ctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")


def least_privilege_vhost() -> Iterator[LeastPrivilege]:
    """Import the definitions into a vhost of this test's own; remove it all afterwards."""
    tag = f"rungtest-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    setup = LeastPrivilege(
        vhost=tag,
        namespace="rung",
        users_prefix=f"{tag}-",
        workers=(f"{tag}-w1", f"{tag}-w2"),
        # Hex: never starts with "-", which rabbitmqctl would read as an option.
        password=secrets.token_hex(16),
    )
    document = definitions(
        setup.topology,
        vhost=setup.vhost,
        users_prefix=setup.users_prefix,
        workers=setup.workers,
        passwords=dict.fromkeys(ROLES, setup.password),
    )
    users = [u["name"] for u in document["users"]]
    # rabbitmqctl runs as the broker's own user: the file must be readable by it.
    with tempfile.TemporaryDirectory() as shared:
        Path(shared).chmod(0o755)
        path = Path(shared) / "definitions.json"
        path.write_text(json.dumps(document))
        path.chmod(0o644)
        try:
            _ctl("import_definitions", str(path))
            _ctl("set_permissions", "-p", setup.vhost, "guest", ".*", ".*", ".*")  # clean-up
            yield setup
        finally:
            with contextlib.suppress(RuntimeError):
                _ctl("delete_vhost", setup.vhost)
            for user in users:
                with contextlib.suppress(RuntimeError):
                    _ctl("delete_user", user)
