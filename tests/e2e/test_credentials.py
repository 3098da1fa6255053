"""Secrets hygiene of the real ``rung`` commands: passwords from files, a warning for a
password on the command line, private state and work directories, and ``--trial-user``
refused where the worker cannot switch users."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from rung.worker.privileges import TrialUser
from tests.support import AMQP_URL
from tests.users import home_for, is_root, other_user, python_for_others, shared_dir

from .conftest import EXAMPLES, ROOT, Cluster, running_cluster

pytestmark = pytest.mark.rabbitmq

WARNING = "the --broker URL on the command line carries a password"


def _without_password(url: str) -> tuple[str, str]:
    """``url`` with no password in it, and the password it had."""
    parts = urlsplit(url)
    assert parts.password is not None
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}")), parts.password


def _rung(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rung", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_client_command_takes_its_password_from_a_file(cluster: Cluster, tmp_path: Path) -> None:
    url, password = _without_password(AMQP_URL)
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    env = {
        **cluster.env(),
        "RUNG_BROKER_URL": url,  # no password anywhere in the environment or the argv
        "RUNG_BROKER_PASSWORD_FILE": str(secret),
    }
    listed = _rung("experiment", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert WARNING not in listed.stderr
    # The same from the command line: --broker without a password, and the file.
    env.pop("RUNG_BROKER_PASSWORD_FILE")
    flags = ("--broker", url, "--broker-password-file", str(secret))
    listed = _rung("experiment", "list", "--json", *flags, env=env)
    assert listed.returncode == 0, listed.stderr
    assert WARNING not in listed.stderr


def test_a_password_on_the_command_line_is_warned_about_once(cluster: Cluster) -> None:
    env = cluster.env()
    listed = _rung("experiment", "list", "--json", "--broker", AMQP_URL, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.count(WARNING) == 1
    assert "--broker-password-file" in listed.stderr
    _, password = _without_password(AMQP_URL)
    warning = next(line for line in listed.stderr.splitlines() if WARNING in line)
    assert f":{password}@" not in warning  # the warning shows the URL redacted
    # The same URL from the environment is no command line: no warning.
    quiet = _rung("experiment", "list", "--json", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert WARNING not in quiet.stderr


def test_state_and_work_directories_are_private(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    result = cluster.create(EXAMPLES / "1_metrics.yaml")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "COMPLETED"
    work = cluster.state_dir / "w1"
    checked = 0
    for top in (cluster.state_dir, work):
        assert _mode(top) == 0o700, top
        for path in top.rglob("*"):
            if path.is_symlink() or path.is_socket() or _unpacked(path):
                continue
            # Nothing either process made is open to group or others (umask 077).
            assert _mode(path) & 0o077 == 0, f"{path} is {_mode(path):04o}"
            checked += 1
    assert (cluster.state_dir / "experiments").is_dir()
    assert checked > 5


def _unpacked(path: Path) -> bool:
    """A file of an experiment's context as its archive gave it (its mode is the
    archive's; the directories above it are closed)."""
    return path.is_file() and ("runs" in path.parts or path.parent.parent.name == "contexts")


@pytest.mark.skipif(not is_root(), reason="gives a directory to a group: needs root")
def test_dir_group_shares_the_state_directory_with_one_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name if os.getgid() != 0 else "nogroup"
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no group {group} on this machine")
    with running_cluster(tmp_path, "--dir-group", group) as cluster:
        result = cluster.create(EXAMPLES / "0_start.yaml", follow=False)
        assert result.returncode == 0, result.stderr
        state = cluster.state_dir
        assert (state.stat().st_gid, _mode(state)) == (gid, 0o2750)
        made = [p for p in state.rglob("*") if p.is_file() and not _unpacked(p)]
        assert made
        for path in made:
            assert path.stat().st_gid == gid  # inherited from the setgid directory
            assert _mode(path) & 0o007 == 0  # never others


def test_trial_env_refuses_rungs_own_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "RUNG_BROKER_URL": "amqp://u@127.0.0.1:1/"}
    refused = _rung("worker", "--gpus", "none", "--trial-env", "RUNG_BROKER_URL", env=env)
    assert refused.returncode != 0
    assert "--trial-env RUNG_BROKER_URL" in refused.stderr
    assert "must never see" in refused.stderr


@pytest.fixture(scope="module")
def user() -> Iterator[TrialUser]:
    with other_user() as made:
        yield made


@pytest.mark.skipif(not is_root(), reason="runs the worker as another user: needs root")
def test_trial_user_is_refused_unless_the_worker_can_switch_users(user: TrialUser) -> None:
    with shared_dir() as scratch:
        _refused_as(user, scratch)


def _refused_as(user: TrialUser, scratch: Path) -> None:
    python = python_for_others(user, scratch)
    if python is None:
        pytest.skip("no Python interpreter that another user can run with Rung importable")
    executable, extra = python
    home = home_for(user, scratch)
    done = subprocess.run(
        [executable, "-m", "rung", "worker", "--gpus", "none", "--trial-user", "nobody"],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            **extra,
            "HOME": str(home),
            "RUNG_BROKER_URL": "amqp://u@127.0.0.1:1/",  # never reached: refused first
        },
        cwd=home,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--trial-user needs the worker to run as root or with CAP_SETUID/CAP_SETGID" in (
        done.stderr
    )
    assert "connected" not in done.stderr
