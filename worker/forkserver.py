"""The fork server: a warm Python process that starts training processes by forking.

A worker starts one with ``python -m rung.worker.forkserver WORKER_PID REQUESTS REPLIES
[UID GID] [--ready]``, in an allowlisted environment that holds none of the worker's secrets. It
makes itself non-dumpable (a trial of the same uid cannot read its ``/proc`` entries),
imports the Core API (``rung``) once, then waits on the Unix socket ``REQUESTS`` for
requests, each a JSON
line carrying the argv, working directory and environment of one training process, with
its stdout and stderr pipes passed alongside (``SCM_RIGHTS``). For each, it forks a
child that becomes the training process:

* a new session (its own process group, so the worker can signal the whole group);
* given ``UID GID`` (``rung worker --trial-user``): no supplementary groups, that gid and
  that uid, for good, before anything else of the trial's runs; then dumpable again, as an
  exec'd process would be (its memory holds nothing of the worker's);
* ``PR_SET_PDEATHSIG``: the child dies with the fork server, which dies with its worker;
* stdin from ``/dev/null``, stdout and stderr to the worker's pipes;
* the request's working directory and environment, exactly (nothing of the server's);
* a fresh seed for ``random``, so no two children share a sequence.

A Python entrypoint (``python train.py ARGS`` or ``python -m module ARGS``) then runs in
the child as ``python`` would run it: ``sys.argv``, ``sys.path[0]``, ``__main__``,
``SystemExit`` codes, tracebacks and exit code 1 on an uncaught exception, non-daemon
threads joined and ``atexit`` handlers run at the end (but no teardown of modules),
``sys.dont_write_bytecode`` as the trial's ``PYTHONDONTWRITEBYTECODE`` says. One
difference: modules imported from the working directory (the run directory) write no
``__pycache__`` there (:mod:`rung.worker.bytecode`), so that an unchanged run directory
can be used again. Other ``PYTHON*`` variables that an interpreter reads only as it
starts have the fork server's values (its environment is the trials' allowlist);
``--start-method exec`` starts a real interpreter. What it saves is the interpreter's
start and the Core API's import: about 80 ms of CPU per trial on our machines, and again
on each resume. Any other entrypoint is exec'd from the child.

A request with ``"compile": {"entries": E, "size": S}`` is the worker's own: the child,
set up the same way, compiles the Python sources under its working directory, a
context's fresh copy, into their ``__pycache__``, adding at most E entries and S bytes
(:func:`rung.worker.bytecode.compile_tree`); it runs nothing of them, and exits 0 (1
where the walk itself failed).

Replies, JSON lines on the socket ``REPLIES``: ``{"ready": true}`` once, when the server
has imported what its children start with (only if started with ``--ready``: a worker of
an older version, whose server restarts from newer code, is not sent a line it does not
know; a server older than ``--ready`` refuses it, so a worker does not run with a fork
server older than itself), ``{"id": N, "pid": P}`` or ``{"id": N, "error": "..."}`` for
a request, and ``{"exited": P, "code": C}`` when a child ends (C negative for a signal,
as ``asyncio`` reports it). The server only ever runs this loop: it holds no threads, so
forking it is safe.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import json
import os
import random
import runpy
import selectors
import signal
import socket
import sys
import threading
from typing import Any

from rung.worker.bytecode import compile_tree, no_bytecode_under
from rung.worker.launch import die_with_parent
from rung.worker.privileges import PrivilegeError, drop_to, harden_process, set_dumpable

__all__ = ["main", "python_entrypoint"]

_MAX_FDS = 2


def python_entrypoint(argv: list[str], executable: str) -> tuple[str, str, list[str]] | None:
    """``(kind, target, args)`` when ``argv`` runs Python code this server can run itself.

    ``kind`` is ``"path"`` (a script) or ``"module"`` (``-m``). Interpreter options other
    than ``-u`` (unbuffered, which the worker sets anyway) mean a real interpreter.
    """
    if len(argv) < 2 or argv[0] != executable:
        return None
    rest = [a for a in argv[1:] if a != "-u"] if argv[1] == "-u" else argv[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return "module", rest[1], rest[2:]
    if rest and not rest[0].startswith("-"):
        return "path", rest[0], rest[1:]
    return None


def _recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    buffer = b""
    fds: list[int] = []
    while not buffer.endswith(b"\n"):
        data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(_MAX_FDS * 4))
        if not data:
            return None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(received)
        buffer += data
    return json.loads(buffer), fds


def _send(sock: socket.socket, reply: dict[str, Any]) -> None:
    sock.sendall(json.dumps(reply).encode() + b"\n")


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _run_python(kind: str, target: str, args: list[str]) -> int:
    """Run a script or module as ``__main__``, the way the interpreter would."""
    if kind == "path":
        sys.argv = [target, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
    else:
        sys.argv = [target, *args]  # runpy replaces it with the module's file
        sys.path[0] = os.getcwd()
    _python_path(os.environ.get("PYTHONPATH", ""))
    no_bytecode_under(os.getcwd())
    try:
        if kind == "path":
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return _system_exit_code(exc)
    except BaseException:  # noqa: BLE001 (what the interpreter does with any uncaught one)
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _python_path(value: str) -> None:
    """``PYTHONPATH``'s directories right after ``sys.path[0]`` (the script's own), in
    order, as an interpreter started with it has them (an empty entry is the working
    directory, as there); what the server's own ``sys.path`` has comes after them."""
    if not value:
        return
    entries = [os.path.abspath(entry) for entry in value.split(os.pathsep)]
    front = list(dict.fromkeys(e for e in entries if e != sys.path[0]))
    sys.path[1:] = front + [p for p in sys.path[1:] if p not in front]


def _system_exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # noqa: T201 (as the interpreter prints it)
    return 1


def _become_child(
    request: dict[str, Any], fds: list[int], parent: int, ids: tuple[int, int] | None
) -> int:
    """In the forked child: set up the process, run the entrypoint, return its exit code."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in (devnull, *fds):
        os.close(fd)
    if ids is not None:
        # Before the death signal: a change of uid clears PR_SET_PDEATHSIG.
        try:
            drop_to(*ids)
        except (OSError, PrivilegeError) as exc:
            print(f"rung: cannot run the trial as uid {ids[0]}: {exc}", file=sys.stderr)  # noqa: T201
            return 126
    die_with_parent(parent)
    set_dumpable(True)  # the server is not; its child is an ordinary process
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    if (room := request.get("compile")) is not None:  # the worker's: a copy compiled
        try:
            compile_tree(os.getcwd(), entries=int(room["entries"]), size=int(room["size"]))
        except Exception:  # noqa: BLE001 (its processes compile what is missing themselves)
            return 1
        return 0
    argv: list[str] = request["argv"]
    python = python_entrypoint(argv, sys.executable)
    if python is None:
        try:
            os.execvpe(argv[0], argv, os.environ)  # noqa: S606 (the configured entrypoint)
        except OSError as exc:
            print(f"rung: cannot run {argv[0]!r}: {exc}", file=sys.stderr)  # noqa: T201
            return 127
    random.seed()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(write_through=True)  # type: ignore[union-attr]
    return _run_python(*python)


def _serve(sock: socket.socket, replies: socket.socket, ids: tuple[int, int] | None) -> int | None:
    """Serve until the worker hangs up (None); in a forked child, its exit code."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    me = os.getpid()
    while True:
        for key, _ in selector.select():
            if key.fileobj is wake_read:
                os.read(wake_read, 4096)
                _reap(replies)
                continue
            received = _recv_request(sock)
            if received is None:
                return None
            request, fds = received
            if len(fds) != _MAX_FDS:
                for fd in fds:
                    os.close(fd)
                _send(replies, {"id": request.get("id"), "error": "expected stdout and stderr"})
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                _send(replies, {"id": request["id"], "error": f"fork failed: {exc}"})
                pid = -1
            if pid == 0:
                selector.close()
                sock.close()
                replies.close()
                for fd in (wake_read, wake_write):
                    os.close(fd)
                return _become_child(request, fds, me, ids)
            for fd in fds:
                os.close(fd)
            if pid > 0:
                _send(replies, {"id": request["id"], "pid": pid})
        _reap(replies)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": _exit_code(status)})


def main(argv: list[str]) -> None:
    announce = bool(argv) and argv[-1] == "--ready"
    argv = argv[:-1] if announce else argv
    if len(argv) not in (3, 5):
        sys.stderr.write(
            "usage: python -m rung.worker.forkserver WORKER_PID REQUESTS REPLIES "
            "[UID GID] [--ready]\n"
        )
        raise SystemExit(2)
    die_with_parent(int(argv[0]))
    try:
        harden_process()
    except PrivilegeError as exc:
        sys.stderr.write(f"rung: the fork server stays dumpable: {exc}\n")
    ids = (int(argv[3]), int(argv[4])) if len(argv) == 5 else None
    # runpy.run_path imports pkgutil on its first call: in every child, as a script starts,
    # unless it is here already (issue 18: about 180 page faults, 1 ms of CPU a trial).
    import pkgutil  # noqa: F401, PLC0415

    import rung  # noqa: F401, PLC0415 (the point: children start with the Core API loaded)

    requests = socket.socket(fileno=int(argv[1]))
    replies = socket.socket(fileno=int(argv[2]))
    if announce:
        _send(replies, {"ready": True})
    code = _serve(requests, replies, ids)
    if code is None:
        return
    _leave(code)


def _leave(code: int) -> None:
    """End a child as the interpreter would, less tearing down every module.

    Non-daemon threads are joined and ``atexit`` handlers run (``logging`` flushes its
    handlers there); then the process exits at once. Tearing down the modules inherited
    from the server costs 10 to 30 ms and does nothing a training script can observe.
    """
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    try:
        atexit._run_exitfuncs()  # noqa: SLF001 (what Py_Finalize calls; no public name)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
