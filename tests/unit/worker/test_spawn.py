"""Starting training processes: the fork server behaves as a fresh interpreter would."""

from __future__ import annotations

import asyncio
import json
import os
import py_compile
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rung.worker.forkserver import python_entrypoint
from rung.worker.spawn import (
    ExecSpawner,
    ForkServer,
    Spawner,
    SpawnError,
    TrialProcess,
    exit_code,
)
from tests.support import fork_server_site, gated_fork_servers, wait_for

PY = sys.executable


@pytest.fixture(params=["fork-server", "exec"])
async def spawner(request: pytest.FixtureRequest) -> AsyncIterator[Spawner]:
    made: Spawner = ForkServer() if request.param == "fork-server" else ExecSpawner()
    yield made
    await made.close()


ROOM = {"entries": 10_000, "size": 1 << 30}


async def _finish(process: TrialProcess) -> tuple[int, str, str]:
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = await asyncio.wait_for(
        asyncio.gather(process.stdout.read(), process.stderr.read()), timeout=30
    )
    code = await asyncio.wait_for(process.wait(), timeout=30)
    return code, out.decode(), err.decode()


def _script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **extra}


def test_which_entrypoints_run_in_the_fork_server() -> None:
    assert python_entrypoint([PY, "train.py", "--x"], PY) == ("path", "train.py", ["--x"])
    assert python_entrypoint([PY, "-u", "train.py"], PY) == ("path", "train.py", [])
    assert python_entrypoint([PY, "-m", "pkg.main", "a"], PY) == ("module", "pkg.main", ["a"])
    # Other interpreters, other options and other programs get a real exec.
    assert python_entrypoint(["/usr/bin/python2", "train.py"], PY) is None
    assert python_entrypoint([PY, "-X", "dev", "train.py"], PY) is None
    assert python_entrypoint(["bash", "run.sh"], PY) is None
    assert python_entrypoint([PY], PY) is None


async def test_a_script_sees_what_python_would_show_it(spawner: Spawner, tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 'sibling module'\n")
    script = _script(
        tmp_path,
        """
        import json, os, sys
        import helper
        print(json.dumps({
            "argv": sys.argv, "cwd": os.getcwd(), "name": __name__,
            "env": {k: v for k, v in os.environ.items() if k.startswith("RUNG_TEST")},
            "helper": helper.VALUE, "stdin": sys.stdin.read(),
        }))
        """,
    )
    process = await spawner.spawn(
        [PY, str(script), "--lr", "0.1"], cwd=tmp_path, env=_env(RUNG_TEST_X="1")
    )
    code, out, err = await _finish(process)
    assert (code, err) == (0, "")
    seen = json.loads(out)
    assert seen == {
        "argv": [str(script), "--lr", "0.1"],
        "cwd": str(tmp_path),
        "name": "__main__",
        "env": {"RUNG_TEST_X": "1"},  # exactly the environment given, nothing inherited
        "helper": "sibling module",
        "stdin": "",
    }


@pytest.mark.parametrize(
    ("body", "code", "in_stderr"),
    [
        ("import sys; sys.exit(3)", 3, ""),
        ("raise SystemExit('bad config')", 1, "bad config"),
        ("raise ValueError('boom')", 1, "ValueError: boom"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, ""),
    ],
)
async def test_exit_codes_are_the_interpreters(
    spawner: Spawner, tmp_path: Path, body: str, code: int, in_stderr: str
) -> None:
    script = _script(tmp_path, body)
    got, _, err = await _finish(await spawner.spawn([PY, str(script)], cwd=tmp_path, env=_env()))
    assert got == code
    assert in_stderr in err
    if "ValueError" in in_stderr:
        assert "Traceback (most recent call last)" in err


async def test_exit_code_waits_for_the_exit_and_not_for_a_background_childs_pipes(
    spawner: Spawner, tmp_path: Path
) -> None:
    """``exit_code`` (what the worker waits on) returns once the process has exited, with
    its code, although a child it left running still holds its stdout open (Python
    3.11's ``Process.wait()`` would wait for that pipe)."""
    script = _script(
        tmp_path,
        """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        sys.exit(3)
        """,
    )
    process = await spawner.spawn([PY, str(script)], cwd=tmp_path, env=_env())
    try:
        assert await asyncio.wait_for(exit_code(process), timeout=20) == 3
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the child, which the worker kills so
        await _finish(process)  # its pipes read to their end: nothing left open


async def test_threads_are_joined_and_atexit_runs(spawner: Spawner, tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import atexit, threading, time
        atexit.register(lambda: print("atexit ran", flush=True))
        def late():
            time.sleep(0.2)
            print("thread finished", flush=True)
        threading.Thread(target=late).start()
        """,
    )
    code, out, _ = await _finish(await spawner.spawn([PY, str(script)], cwd=tmp_path, env=_env()))
    assert code == 0
    assert out.splitlines() == ["thread finished", "atexit ran"]


async def test_modules_and_other_programs(spawner: Spawner, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    code, out, _ = await _finish(
        await spawner.spawn([PY, "-m", "pkg.main", "a"], cwd=tmp_path, env=_env())
    )
    assert (code, out.strip()) == (0, "__main__ ['a']")
    code, out, _ = await _finish(
        await spawner.spawn(["sh", "-c", "echo from sh; exit 4"], cwd=tmp_path, env=_env())
    )
    assert (code, out) == (4, "from sh\n")


async def test_pythonpath_is_searched_as_the_interpreter_searches_it(
    spawner: Spawner, tmp_path: Path
) -> None:
    """A module found only on the trial's PYTHONPATH (the worker puts Determined's names
    there) is imported and run with -m, from the fork server as from a real python."""
    extra = tmp_path / "extra"
    (extra / "elsewhere").mkdir(parents=True)
    (extra / "elsewhere" / "__init__.py").write_text("")
    (extra / "elsewhere" / "tool.py").write_text("import sys\nprint('tool', sys.argv[1:])\n")
    work = tmp_path / "work"
    work.mkdir()
    # The first entry is the fork server's own sys.path[0] (this directory): it must not
    # push the others out of place.
    entries = [os.getcwd(), str(tmp_path / "missing"), str(extra)]
    env = _env(PYTHONPATH=os.pathsep.join(entries))
    code, out, err = await _finish(
        await spawner.spawn([PY, "-m", "elsewhere.tool", "x"], cwd=work, env=env)
    )
    assert (code, out.strip()) == (0, "tool ['x']"), err
    script = _script(work, "import sys; print(sys.path.index(sys.argv[1]))")
    code, out, err = await _finish(
        await spawner.spawn([PY, str(script), str(extra)], cwd=work, env=env)
    )
    assert (code, out.strip()) == (0, "3"), err  # after the script's own and two entries


async def test_modules_of_the_run_directory_write_no_bytecode_there(tmp_path: Path) -> None:
    """The fork server's children import the working directory's modules (packages,
    bytecode-only modules, ``-m``) but leave no ``__pycache__`` there, so the directory
    can be used again (rung.worker.bytecode); a module elsewhere, a directory whose name
    merely starts with the same characters included, gets its bytecode written as the
    interpreter writes it, unless the trial sets PYTHONDONTWRITEBYTECODE; the loader
    pickles as a stock one does."""
    work = tmp_path / "work"
    (work / "pkg" / "sub").mkdir(parents=True)
    (work / "helper.py").write_text("VALUE = 'helper'\n")
    (work / "pkg" / "__init__.py").write_text("")
    (work / "pkg" / "sub" / "deep.py").write_text("VALUE = 'deep'\n")
    (work / "pkg" / "main.py").write_text("import helper\nprint('main', helper.VALUE)\n")
    compiled = tmp_path / "only.py"
    compiled.write_text("VALUE = 'bytecode only'\n")
    py_compile.compile(str(compiled), cfile=str(work / "only.pyc"), doraise=True)
    sibling = tmp_path / "work2"  # shares the run directory's name as a prefix
    sibling.mkdir()
    (sibling / "outside.py").write_text("VALUE = 'outside'\n")
    script = _script(
        work,
        """
        import pickle, sys
        import helper, only, outside
        from pkg.sub import deep
        pickle.loads(pickle.dumps(helper.__spec__))
        print(helper.VALUE, deep.VALUE, only.VALUE, outside.VALUE, sys.dont_write_bytecode)
        """,
    )
    spawner = ForkServer()

    async def run(argv: list[str], **env: str) -> str:
        code, out, err = await _finish(
            await spawner.spawn(argv, cwd=work, env=_env(PYTHONPATH=str(sibling), **env))
        )
        assert code == 0, err
        assert [p for p in work.rglob("*") if p.name == "__pycache__"] == []
        return out.strip()

    try:
        assert await run([PY, str(script)], PYTHONDONTWRITEBYTECODE="1") == (
            "helper deep bytecode only outside True"
        )
        assert not (sibling / "__pycache__").exists()
        assert await run([PY, str(script)]) == "helper deep bytecode only outside False"
        assert list((sibling / "__pycache__").glob("outside.*.pyc"))
        assert await run([PY, "-m", "pkg.main"]) == "main helper"
    finally:
        await spawner.close()


async def test_a_copy_compiled_by_the_fork_server_is_read_by_its_processes(
    tmp_path: Path,
) -> None:
    """ForkServer.compile writes the copy's bytecode in a child that runs none of it (a
    module that leaves a mark as it runs leaves none); the processes then import that
    bytecode (shown by a source changed afterwards to the same size and time: the
    import runs what was compiled) and write nothing."""
    work = tmp_path / "work"
    work.mkdir()
    mark = tmp_path / "ran"
    module = work / "model.py"
    module.write_text(f"open({str(mark)!r}, 'a').close(); print('model ran'); VALUE = 'aaa'\n")
    script = _script(work, "import model; print(model.VALUE)")
    spawner = ForkServer()
    try:
        assert await spawner.compile(work, timeout=30, **ROOM)
        assert not spawner._live  # reaped
        assert not mark.exists()  # compiled, never run
        compiled = sorted(p.name for p in (work / "__pycache__").iterdir())
        stamp = module.stat()
        module.write_text(f"open({str(mark)!r}, 'a').close(); print('model ran'); VALUE = 'bbb'\n")
        os.utime(module, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        code, out, err = await _finish(await spawner.spawn([PY, str(script)], cwd=work, env=_env()))
        assert (code, out, err) == (0, "model ran\naaa\n", "")
        assert sorted(p.name for p in (work / "__pycache__").iterdir()) == compiled
    finally:
        await spawner.close()


async def test_a_compilation_past_its_time_is_killed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for n in range(300):
        (work / f"m{n}.py").write_text(f"X = [{', '.join(map(str, range(2000)))}]\n")
    spawner = ForkServer()
    try:
        assert not await spawner.compile(work, timeout=0.001, **ROOM)
        assert not spawner._live  # killed and reaped
        code, out, _ = await _finish(
            await spawner.spawn([PY, "-c", "print('still serving')"], cwd=work, env=_env())
        )
        assert (code, out) == (0, "still serving\n")
        # Cancelled, twice, before the fork server answers and once its child runs
        # (about 0.6 s of compiling here): killed and reaped before it returns, each time.
        for wait_for_the_child in (False, True):
            before = repr(spawner._ids)
            task = asyncio.create_task(spawner.compile(work, timeout=30, **ROOM))
            await asyncio.sleep(0)
            if wait_for_the_child:
                async with asyncio.timeout(10):
                    while not spawner._live:  # noqa: ASYNC110 (no event: the reply sets it)
                        await asyncio.sleep(0.001)
            task.cancel()
            for _ in range(3):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert repr(spawner._ids) != before  # its request went out, and was answered,
            assert not spawner._pending
            assert not spawner._live  # and its child is gone
    finally:
        await spawner.close()


async def test_no_two_children_share_a_random_sequence(tmp_path: Path) -> None:
    server = ForkServer()
    try:
        script = _script(tmp_path, "import random; print(random.random())")
        outs = [
            (await _finish(await server.spawn([PY, str(script)], cwd=tmp_path, env=_env())))[1]
            for _ in range(3)
        ]
    finally:
        await server.close()
    assert len(set(outs)) == 3


async def _sleeper(server: ForkServer, tmp_path: Path) -> TrialProcess:
    """A child of ``server`` that sleeps for a minute, once it is up."""
    script = _script(tmp_path, "import time; print('up', flush=True); time.sleep(60)")
    process = await server.spawn([PY, str(script)], cwd=tmp_path, env=_env())
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), timeout=30) == b"up\n"
    return process


async def test_children_die_with_the_fork_server_which_comes_back(tmp_path: Path) -> None:
    server = ForkServer()
    try:
        process = await _sleeper(server, tmp_path)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), timeout=30) == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):  # PR_SET_PDEATHSIG took it
            await asyncio.wait_for(_gone(process.pid), timeout=30)
        again = await server.spawn([PY, "-c", "print('again')"], cwd=tmp_path, env=_env())
        code, out, _ = await _finish(again)
        assert (code, out) == (0, "again\n")
    finally:
        await server.close()


async def _gone(pid: int) -> None:
    """Raise ProcessLookupError once ``pid`` no longer exists (as a zombie or at all)."""
    while True:
        os.kill(pid, 0)
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        if status == "Z":
            raise ProcessLookupError(pid)
        await asyncio.sleep(0.05)


async def test_a_cancelled_spawn_costs_no_other_trial_its_life(tmp_path: Path) -> None:
    """A spawn cancelled while the fork server forks (the worker stopping, say): its
    late process is killed, and the fork server, with every other child, lives on. The
    late reply used to raise in the reader, which took the fork server down with all."""
    server = ForkServer()
    try:
        other = await _sleeper(server, tmp_path)
        script = [PY, "-c", "import time; time.sleep(60)"]
        late = asyncio.create_task(server.spawn(script, cwd=tmp_path, env=_env()))
        for _ in range(100_000):  # the request is out: cancel it while it forks
            if server._pending or late.done():
                break
            await asyncio.sleep(0)
        assert server._pending, "the request was answered before it could be cancelled"
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        # The fork server answers the next request: it did not go down.
        again = await server.spawn([PY, "-c", "print('again')"], cwd=tmp_path, env=_env())
        assert (await _finish(again))[:2] == (0, "again\n")
        assert other.returncode is None
        os.kill(other.pid, signal.SIGKILL)
        assert (await _finish(other))[0] == -signal.SIGKILL  # its pipes read to their end
    finally:
        await server.close()


async def test_start_waits_until_the_fork_server_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start`` returns once the server has imported what its children start with, not
    when its process exists; past its timeout it says so, and a later call still gets
    the same server once it is ready."""
    gate, waiting = gated_fork_servers(tmp_path, monkeypatch)
    server = ForkServer()
    try:
        with pytest.raises(SpawnError, match=r"not ready within 0\.2 s"):
            await server.start(timeout=0.2)
        await wait_for(waiting.exists, 30, "the server at its gate")
        first = server.pid
        starting = asyncio.create_task(server.start())
        gate.touch()
        await asyncio.wait_for(starting, 30)
        assert server.pid == first  # the same server, not a second one
        script = _script(tmp_path, "print('forked')")
        code, out, _ = await _finish(
            await server.spawn([PY, str(script)], cwd=tmp_path, env=_env())
        )
        assert (code, out) == (0, "forked\n")
    finally:
        gate.touch()
        await server.close()


async def test_start_fails_when_the_fork_server_dies_before_it_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fork_server_site(tmp_path, monkeypatch, "import os; os._exit(3)")
    server = ForkServer()
    try:
        with pytest.raises(SpawnError, match="exited before it was ready"):
            await server.start(timeout=60)
    finally:
        await server.close()
    assert server.pid is None


async def test_an_exec_spawner_has_nothing_to_start(tmp_path: Path) -> None:
    spawner = ExecSpawner()
    await spawner.start()
    script = _script(tmp_path, "print('exec')")
    code, out, _ = await _finish(await spawner.spawn([PY, str(script)], cwd=tmp_path, env=_env()))
    assert (code, out) == (0, "exec\n")


@pytest.mark.parametrize("announce", [True, False])
def test_the_ready_line_goes_only_to_a_worker_that_asks_for_it(announce: bool) -> None:
    """A worker of an older version whose server restarts from newer code reads every
    reply as a request's or an exit's: it is not sent a line it does not know."""
    requests_here, requests_there = socket.socketpair()
    replies_here, replies_there = socket.socketpair()
    with requests_here, replies_here:
        argv = [str(os.getpid()), str(requests_there.fileno()), str(replies_there.fileno())]
        server = subprocess.Popen(
            [PY, "-m", "rung.worker.forkserver", *argv, *(["--ready"] if announce else [])],
            pass_fds=(requests_there.fileno(), replies_there.fileno()),
        )
        requests_there.close()
        replies_there.close()
        requests_here.close()  # hung up: the server leaves once it serves
        assert server.wait(60) == 0
        replies_here.settimeout(10)
        lines = replies_here.makefile("rb").read().splitlines()
    assert [json.loads(line) for line in lines] == ([{"ready": True}] if announce else [])
