"""Imports from a run directory that write no bytecode there.

A training process forked by the fork server (:mod:`rung.worker.forkserver`) imports the
modules of its run directory, the private copy of the experiment's context, through
:class:`RunDirectoryLoader`: they are compiled in memory, as they would be in a fresh
copy, and no ``__pycache__`` is written there. A run directory its process left as it
was copied can then serve the next process of the same experiment
(:mod:`rung.worker.pristine`). Bytecode already there is still read (the client leaves
it out of the contexts it packs). Every other directory is searched as the
interpreter searches it, bytecode written as usual, except one reached through the run
directory (a symlink or a ``..`` from inside it).

A context with modules of its own is also compiled once, as it is copied
(:func:`compile_tree`, in a child of the fork server that runs none of the context's
code), before the copy's snapshot: its processes then read that bytecode instead of each
compiling the modules again, and leave the directory as it was copied. So does any other
interpreter of the same version that imports them, a new one included (``multiprocessing``'s
``spawn``, a distributed launcher's ranks), and code that makes its own source loader.

Not covered, so such a directory is not kept: a module the compilation left out (past
its bounds, or one that does not compile) imported by a new interpreter, by code that
makes its own loader or by an import hook that instruments code; and bytecode of another
Python version or optimisation level.

The loader is defined here, in a module imported by name, so that it pickles as a
stock loader does (the fork server itself runs as ``__main__``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import py_compile
import stat
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "COMPILE_BYTES",
    "COMPILE_FILES",
    "COMPILE_FILE_BYTES",
    "COMPILE_S",
    "RunDirectoryLoader",
    "compile_tree",
    "no_bytecode_under",
    "worth_compiling",
]

# What compile_tree compiles of a context, at most: its files to compile, each file's
# size and all of theirs (the rest is compiled when imported, as before). It delays the
# first process of a copy: 4 MiB of sources took about 0.8 s here.
COMPILE_FILES = 2_000
COMPILE_FILE_BYTES = 1024 * 1024
COMPILE_BYTES = 4 * 1024 * 1024
# How long a worker waits for a copy's compilation before it kills it (the copy is used
# all the same: its processes compile what is missing as they import it).
COMPILE_S = 10.0


class RunDirectoryLoader(importlib.machinery.SourceFileLoader):
    """A source loader that reads bytecode but never writes it (``__spec__.cached``
    names a file that may not exist, as under ``python -B``)."""

    def set_data(self, path: str, data: ReadableBuffer, *, _mode: int = 0o666) -> None:
        """What the interpreter calls to cache a module's bytecode: nothing here."""


def _within(roots: set[str]) -> Callable[[str], bool]:
    def within(path: str) -> bool:
        try:
            forms = {os.path.abspath(path or "."), os.path.realpath(path or ".")}
        except OSError:  # a relative entry, and the working directory is gone
            return False
        return any(f == r or f.startswith(r.rstrip(os.sep) + os.sep) for f in forms for r in roots)

    return within


def no_bytecode_under(directory: str) -> None:
    """Install the path hook for ``directory`` and below, ahead of the interpreter's own.

    Called once in a forked child, before its script runs. Nothing under ``directory`` is
    in ``sys.path_importer_cache`` then: the fork server never imports from a run
    directory, and the child has not imported anything yet.
    """
    within = _within({os.path.abspath(directory), os.path.realpath(directory)})
    finder = importlib.machinery.FileFinder.path_hook(
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (RunDirectoryLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )

    def hook(path: str) -> importlib.abc.PathEntryFinder:
        if not within(path):
            raise ImportError(path)  # declined: the next hook, the interpreter's own
        return finder(path)

    sys.path_hooks.insert(0, hook)


def _selected(directory: str) -> list[tuple[str, int]]:
    """The Python sources :func:`compile_tree` compiles, with their sizes: regular files
    only (no symlink is followed), in a stable order, within :data:`COMPILE_FILES`,
    :data:`COMPILE_FILE_BYTES` and :data:`COMPILE_BYTES`."""
    found: list[tuple[str, int]] = []
    total = 0
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            size = info.st_size
            if not stat.S_ISREG(info.st_mode) or size > COMPILE_FILE_BYTES:
                continue
            if total + size > COMPILE_BYTES:
                return found
            found.append((path, size))
            total += size
            if len(found) == COMPILE_FILES:
                return found
    return found


def worth_compiling(directory: Path) -> bool:
    """Whether a fresh copy has modules to compile: a script alone gains nothing (it is
    compiled as it runs, never from bytecode)."""
    return len(_selected(str(directory))) > 1


def compile_tree(directory: str, *, entries: int, size: int) -> int:
    """Write the bytecode of ``directory``'s Python sources (:func:`_selected`) into
    their ``__pycache__``, as an import would (timestamp-checked, this interpreter's
    optimisation level), adding at most ``entries`` files and directories and ``size``
    bytes (what is left of the copy's snapshot's bounds, :mod:`rung.worker.pristine`:
    the first file past them is removed, and the rest left to their imports). A file
    that does not compile is left to its import, which reports the error as usual. As
    with any cached bytecode, its compiler's warnings are then not shown again. Returns
    how many were written. Runs in a forked child: it imports nothing (a module of the
    context's could shadow one) and runs nothing of the context's."""
    written = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, _ in _selected(directory):
            cfile = importlib.util.cache_from_source(path)
            cache = os.path.dirname(cfile)
            new = not os.path.isdir(cache)
            if entries < 1 + new:
                break
            try:
                py_compile.compile(
                    path,
                    cfile=cfile,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
                )
                made = os.lstat(cfile).st_size
            except (py_compile.PyCompileError, OSError, ValueError, RecursionError, MemoryError):
                if new and os.path.isdir(cache):
                    entries -= 1  # (made, and kept: not empty, or not ours to remove)
                continue
            if made > size:
                os.unlink(cfile)
                if new:
                    with contextlib.suppress(OSError):
                        os.rmdir(cache)
                break
            entries -= 1 + new
            size -= made
            written += 1
    return written
