"""Imports from a run directory that write no bytecode there.

A training process forked by the fork server (:mod:`rung.worker.forkserver`) imports the
modules of its run directory, the private copy of the experiment's context, through
:class:`RunDirectoryLoader`: they are compiled in memory, as they would be in a fresh
copy, and no ``__pycache__`` is written there. A run directory its process left as it
was copied can then serve the next process of the same experiment
(:mod:`rung.worker.pristine`). Bytecode already there is still read (a context never
ships any: the archive leaves it out). Every other directory is searched as the
interpreter searches it, bytecode written as usual, except one reached through the run
directory (a symlink or a ``..`` from inside it).

Not covered, so such a directory is not kept: modules loaded by code that makes its own
loader (``importlib.util.spec_from_file_location``, import hooks that instrument code)
and processes started as new interpreters (``multiprocessing``'s ``spawn`` and
``forkserver`` methods, a distributed launcher's ranks).

The loader is defined here, in a module imported by name, so that it pickles as a
stock loader does (the fork server itself runs as ``__main__``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["RunDirectoryLoader", "no_bytecode_under"]


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
