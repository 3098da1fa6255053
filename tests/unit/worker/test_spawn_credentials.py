"""Credentials never reach a training process, with either way of starting one.

The fork server starts from an allowlisted environment and is non-dumpable; a process that
calls ``harden_process()`` (``rung worker`` does) cannot be read by a trial of its uid;
with a trial user, the trial runs as that user and cannot read the worker's files.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rung.worker.privileges import TrialUser
from rung.worker.spawn import ExecSpawner, ForkServer, Spawner, TrialProcess
from tests.users import home_for, is_root, other_user, python_for_others, shared_dir

PY = sys.executable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

# A training script that reads what a hostile one would, and prints what it got.
HUNT = """
import json, os, sys

def read(path):
    try:
        with open(path, "rb") as f:
            return {"outcome": "read", "text": f.read().decode("latin-1")}
    except OSError as exc:
        return {"outcome": type(exc).__name__, "text": ""}

def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

ppid = os.getppid()
found = {
    "uid": os.getuid(),
    "environ": {"outcome": "read", "text": repr(dict(os.environ))},
    "self": read("/proc/self/environ"),
    "parent": read(f"/proc/{ppid}/environ"),
    "parent_mem": read(f"/proc/{ppid}/maps"),
    "grandparent": read(f"/proc/{parent_of(ppid)}/environ"),
    "secret_file": read(sys.argv[1]) if len(sys.argv) > 1 else None,
}
print(json.dumps(found))
"""


@pytest.fixture(params=["fork-server", "exec"])
async def spawner(request: pytest.FixtureRequest) -> AsyncIterator[Spawner]:
    made: Spawner = ForkServer() if request.param == "fork-server" else ExecSpawner()
    yield made
    await made.close()


async def _finish(process: TrialProcess) -> tuple[int, str, str]:
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = await asyncio.wait_for(
        asyncio.gather(process.stdout.read(), process.stderr.read()), timeout=30
    )
    code = await asyncio.wait_for(process.wait(), timeout=30)
    return code, out.decode(), err.decode()


def _marker() -> str:
    return f"marker-{secrets.token_hex(8)}"


def _seen(found: dict[str, Any], marker: str) -> list[str]:
    return [
        name
        for name, value in found.items()
        if isinstance(value, dict) and marker in value.get("text", "")
    ]


async def test_the_fork_server_starts_from_an_allowlisted_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _marker()
    monkeypatch.setenv("RUNG_BROKER_URL", f"amqp://rung-worker:{marker}@rabbit:5672/")
    monkeypatch.setenv("SOME_CLOUD_TOKEN", marker)  # not on the allowlist either
    monkeypatch.setenv("LC_TESTING", "kept")  # a locale family: allowlisted
    server = ForkServer()
    try:
        (tmp_path / "hunt.py").write_text(HUNT)
        process = await server.spawn(
            [PY, "hunt.py"], cwd=tmp_path, env={"PATH": os.environ["PATH"]}
        )
        code, out, err = await _finish(process)
        assert (code, err) == (0, "")
        assert server.pid is not None
        block = Path(f"/proc/{server.pid}/environ").read_bytes().decode("latin-1")
    finally:
        await server.close()
    assert marker not in block  # the fork server's own original environment block
    assert "LC_TESTING=kept" in block
    found = json.loads(out)
    assert _seen(found, marker) == []  # nor the child's /proc/self/environ, nor its parent's
    assert "LC_TESTING=kept" in found["self"]["text"]  # what the child's block shows


async def test_rungs_own_secrets_never_reach_a_trial(spawner: Spawner, tmp_path: Path) -> None:
    marker = _marker()
    (tmp_path / "show.py").write_text("import os; print(sorted(os.environ))\n")
    env = {
        "PATH": os.environ["PATH"],
        "RUNG_BROKER_URL": f"amqp://u:{marker}@h/",
        "RUNG_BROKER_PASSWORD_FILE": "/run/secrets/rung",
        "RUNG_TRIAL_INFO": "{}",
    }
    code, out, err = await _finish(await spawner.spawn([PY, "show.py"], cwd=tmp_path, env=env))
    assert (code, err) == (0, "")
    names = set(eval(out))  # noqa: S307 (a list literal the script printed)
    assert "RUNG_TRIAL_INFO" in names
    assert not names & {"RUNG_BROKER_URL", "RUNG_BROKER_PASSWORD_FILE"}


DRIVER = """
import asyncio, json, os, sys
from pathlib import Path
from rung.worker.privileges import harden_process, resolve_trial_user
from rung.worker.spawn import make_spawner

async def main():
    method, harden, user, cwd, secret, channel = sys.argv[1:7]
    if harden == "1":
        harden_process()
    trial_user = resolve_trial_user(user) if user else None
    server = None
    env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH") if k in os.environ}
    if channel:
        server = await asyncio.start_unix_server(lambda r, w: None, path=channel)
        env["RUNG_CHANNEL"] = channel
    spawner = make_spawner(method, trial_user=trial_user)
    try:
        process = await spawner.spawn(
            [sys.executable, "hunt.py", secret], cwd=Path(cwd), env=env
        )
        out = await process.stdout.read()
        err = await process.stderr.read()
        code = await process.wait()
        print(out.decode(), end="")
        sys.stderr.write(err.decode())
    finally:
        await spawner.close()
        if server is not None:
            server.close()
    raise SystemExit(code)

asyncio.run(main())
"""

needs_root = pytest.mark.skipif(not is_root(), reason="switches users: needs root")


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


def _drive(
    python: tuple[str, dict[str, str]],
    *args: str,
    cwd: Path,
    env: dict[str, str],
    user: TrialUser | None = None,
) -> dict[str, Any]:
    executable, extra = python
    switch: dict[str, Any] = (
        {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
    )
    done = subprocess.run(
        [executable, str(cwd / "driver.py"), *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **extra, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **switch,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])  # after any log line
    return found


@needs_root
# The fork server always hardens itself: only exec has an unhardened control run.
@pytest.mark.parametrize(
    ("method", "harden"), [("fork-server", True), ("exec", True), ("exec", False)]
)
def test_a_same_uid_trial_cannot_read_a_hardened_worker(
    method: str,
    harden: bool,
    user: TrialUser,
    python: tuple[str, dict[str, str]],
    scratch: Path,
) -> None:
    """The worker (here a small driver run as an unprivileged user) holds the password in
    its environment; its trial runs as the same uid and hunts for it in /proc."""
    marker = _marker()
    home = home_for(user, scratch)
    (home / "hunt.py").write_text(HUNT)
    (home / "driver.py").write_text(DRIVER)
    found = _drive(
        python,
        *(method, "1" if harden else "0", "", str(home), "/dev/null", ""),
        cwd=home,
        env={"HOME": str(home), "RUNG_BROKER_URL": f"amqp://rung-worker:{marker}@rabbit/"},
        user=user,
    )
    assert found["uid"] == user.uid
    worker = "parent" if method == "exec" else "grandparent"
    if harden:
        assert _seen(found, marker) == []
        assert found[worker]["outcome"] == "PermissionError"
        assert found["parent"]["outcome"] == "PermissionError"  # the fork server, or worker
        assert found["parent_mem"]["outcome"] == "PermissionError"
    else:  # the old behaviour: the worker's environment block is there to read
        assert _seen(found, marker) == [worker]


@needs_root
@pytest.mark.parametrize("method", ["fork-server", "exec"])
def test_a_trial_user_runs_the_trial_and_cannot_read_the_workers_files(
    method: str, user: TrialUser, python: tuple[str, dict[str, str]], scratch: Path
) -> None:
    base = scratch / f"worker-{method}"  # the worker's own: closed to others
    base.mkdir(mode=0o700)
    marker = _marker()
    secret = base / "password"
    secret.write_text(marker)
    secret.chmod(0o600)
    run_dir = base / "work" / "runs" / "exp" / "trial-1"  # under directories of 0700
    run_dir.mkdir(parents=True)
    for directory in (run_dir, *list(run_dir.parents)[:3]):
        directory.chmod(0o700)
    (run_dir / "hunt.py").write_text(HUNT)
    (run_dir / "helper.py").write_text("VALUE = 1\n")
    (base / "driver.py").write_text(DRIVER)
    channel = base / "channel"
    channel.mkdir(mode=0o700)
    socket_file = channel / "core.sock"
    found = _drive(
        python,
        *(method, "1", user.name, str(run_dir), str(secret), str(socket_file)),
        cwd=base,
        env={"RUNG_BROKER_URL": f"amqp://rung-worker:{marker}@rabbit/"},
    )
    assert found["uid"] == user.uid
    assert found["secret_file"]["outcome"] == "PermissionError"
    assert _seen(found, marker) == []  # a trial of another uid reads no /proc environ
    assert f"'HOME': {user.home!r}" in found["environ"]["text"]
    # The trial's own files are the trial user's; the worker's are not.
    assert run_dir.stat().st_uid == user.uid
    assert (run_dir / "helper.py").stat().st_uid == user.uid
    assert socket_file.stat().st_uid == user.uid
    assert channel.stat().st_uid == user.uid
    assert secret.stat().st_uid == 0
    assert (run_dir.parent.stat().st_mode & 0o777) == 0o701  # pass through, never list


@needs_root
async def test_a_failed_switch_never_runs_the_trial_as_root(tmp_path: Path) -> None:
    """A uid the fork server cannot become ends the child with 126 before any of the
    trial's code runs."""
    (tmp_path / "mark.py").write_text("open('ran', 'w').write('yes')\n")
    bogus = TrialUser(name="bogus", uid=2**32 - 1, gid=2**32 - 1, home="/")
    server = ForkServer(trial_user=bogus)
    try:
        code, _, err = await _finish(
            await server.spawn([PY, "mark.py"], cwd=tmp_path, env={"PATH": os.environ["PATH"]})
        )
    finally:
        await server.close()
    assert code == 126
    assert "cannot run the trial as uid" in err
    assert not (tmp_path / "ran").exists()


def test_harden_process_makes_a_process_non_dumpable() -> None:
    code = textwrap.dedent(
        """
        from rung.worker.privileges import harden_process, is_dumpable
        before = is_dumpable()
        done = harden_process()
        print(before, done, is_dumpable())
        """
    )
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True", "False"]
