"""Other users for the tests of trial users and same-uid trials (tests run as root).

``other_user()`` makes an account of the test run's own with ``useradd`` (removed
afterwards), or falls back to ``nobody``. ``python_for_others()`` is an interpreter that
user can run with Rung importable (put it, and whatever else that user must reach, in a
``shared_dir()``): this checkout's own when its path is open to others,
else a copy of it and its standard library (pyenv keeps it under root's private home),
with this virtual environment's packages on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from rung.worker.privileges import TrialUser, resolve_trial_user

ROOT = Path(__file__).resolve().parents[1]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def other_user() -> Iterator[TrialUser]:
    """An unprivileged account for the test: a fresh one where ``useradd`` works."""
    name = f"rt{uuid.uuid4().hex[:10]}"
    useradd = shutil.which("useradd")
    made = False
    if useradd is not None:
        done = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            timeout=30,
            check=False,
        )
        made = done.returncode == 0
    try:
        yield resolve_trial_user(name if made else "nobody")
    finally:
        userdel = shutil.which("userdel")
        if made and userdel is not None:
            subprocess.run([userdel, name], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory other users can pass through (0711), outside pytest's own temporary
    root, which each pytest session closes again (0700) when it starts; removed after."""
    path = Path(tempfile.mkdtemp(prefix="rung-test-users-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _runs_as(python: str, user: TrialUser, env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import rung.worker.spawn"],
            env=env,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return False
    return done.returncode == 0


def _open_way(path: Path) -> None:
    """Give others a way through (o+x) every directory above ``path`` that we own."""
    for directory in path.parents:
        info = directory.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & 0o001:
            directory.chmod((info.st_mode & 0o7777) | 0o001)


def _copy_interpreter(scratch: Path) -> tuple[Path, Path]:
    """This interpreter and its standard library, copied where others may run them (the
    original can sit under a private home, as pyenv's does). Returns (python, lib dir)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    prefix = Path(sys.base_prefix)
    copy = scratch / "python"
    lib = copy / "lib"
    if not (copy / "bin" / version).exists():
        shutil.copytree(
            prefix / "lib" / version,
            lib / version,
            symlinks=True,
            ignore=shutil.ignore_patterns("site-packages", "test", "idlelib", "tkinter"),
        )
        (lib / version / "site-packages").mkdir()
        for shared in (prefix / "lib").glob("libpython*"):
            shutil.copy2(shared, lib / shared.name, follow_symlinks=False)
        (copy / "bin").mkdir()
        shutil.copy2(prefix / "bin" / version, copy / "bin" / version)
        for directory in (scratch, copy, copy / "bin", lib):
            directory.chmod(0o755)
    _open_way(copy)
    return copy / "bin" / version, lib


def python_for_others(user: TrialUser, scratch: Path) -> tuple[str, dict[str, str]] | None:
    """``(interpreter, environment additions)`` that ``user`` can run Rung with, or None.

    This interpreter if ``user`` can run it; else a copy of it and its standard library
    under ``scratch`` (with this virtual environment's packages on ``PYTHONPATH``)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if _runs_as(sys.executable, user, {**base, "PYTHONPATH": str(ROOT)}):
        return sys.executable, {"PYTHONPATH": str(ROOT)}
    try:
        python, lib = _copy_interpreter(scratch)
    except OSError:
        return None
    extra = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]]),
        "LD_LIBRARY_PATH": str(lib),
    }
    return (str(python), extra) if _runs_as(str(python), user, {**base, **extra}) else None


def home_for(user: TrialUser, parent: Path) -> Path:
    """A fresh directory of ``user``'s own under ``parent`` (a :func:`shared_dir`), with
    a way through to it."""
    home = parent / f"home-{user.name}-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    _open_way(home)
    return home
