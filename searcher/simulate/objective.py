"""Your own objective for the simulator: ``rung simulate CONFIG --objective FILE.py:FUNCTION``.

``FUNCTION(hparams, length) -> float`` returns the metric a trial with these
hyperparameters reports after training to ``length``. ``hparams`` is a fresh copy of the
nested dict the trial gets (``hparams["optimizer"]["lr"]``), so the function may change it.
The function must be deterministic: the same inputs give the same result, every time.
The simulator calls it twice on its first evaluation and refuses one whose two answers
differ; beyond that it trusts it.

Two optional module-level names of the file are read as well:

* ``MAX_LENGTH`` (an int): the largest length the function is defined for; a config whose
  ``searcher.max_length`` is longer is refused before the search starts.
* ``OPTIMUM`` (a number): the best value reachable at full length; the result then has
  ``regret`` (the best final metric minus ``OPTIMUM``).

The file is imported under a private module name that is removed from ``sys.modules``
again once it has loaded; its directory is on ``sys.path`` only while it imports, so a
sibling module imported at the top of the file is found. Every way a file or a function
can be wrong raises :class:`SimulationError` naming the thing, the bad value and the fix.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.machinery
import importlib.util
import itertools
import json
import math
import numbers
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from rung.searcher.errors import SimulationError

__all__ = ["Objective", "load_objective"]

# Each load gets its own module name, so two loads of one file never share a module.
_loads = itertools.count()


def _describe(hparams: Mapping[str, Any]) -> str:
    return json.dumps(hparams, sort_keys=True, default=repr)


def _location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}:{last.lineno} in {last.name}"


class Objective:
    """A :class:`~rung.searcher.simulate.Benchmark` made from a deterministic function
    ``(hparams: dict, length: int) -> float``; see the module's documentation."""

    def __init__(
        self,
        function: Callable[[dict[str, Any], int], Any],
        name: str,
        max_length: int | None = None,
        optimum: float | None = None,
    ) -> None:
        self.function = function
        self.name = name
        self.max_length = max_length
        self.optimum = optimum
        self._checked = False

    @classmethod
    def load(cls, spec: str) -> Objective:
        """Load ``FILE.py:FUNCTION``, with the file's ``MAX_LENGTH`` and ``OPTIMUM``."""
        return load_objective(spec)

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float:
        if self.max_length is not None and not 1 <= length <= self.max_length:
            raise SimulationError(
                f"objective {self.name} is defined for lengths 1..{self.max_length} "
                f"(its MAX_LENGTH), got {length}; set searcher.max_length to at most "
                f"{self.max_length}"
            )
        value = self._call(hparams, length)
        if not self._checked:
            again = self._call(hparams, length)
            if again != value:
                raise SimulationError(
                    f"objective {self.name} is not deterministic: for hparams "
                    f"{_describe(hparams)} at length {length} it returned {value!r}, then "
                    f"{again!r}; the simulator needs the same result for the same inputs "
                    "every time: keep no state between calls, and seed any noise from the "
                    "hparams and the length, e.g. random.Random(f'{hparams}/{length}')"
                )
            self._checked = True
        return value

    def _call(self, hparams: Mapping[str, Any], length: int) -> float:
        where = f"for hparams {_describe(hparams)} at length {length}"
        try:
            raw = self.function(copy.deepcopy(dict(hparams)), length)
        except (Exception, SystemExit) as exc:  # a function that calls sys.exit() too
            raise SimulationError(
                f"objective {self.name} raised {type(exc).__name__}: {exc}{_location(exc)} "
                f"{where}; fix the function so that it returns a number for every point "
                "of the search space and every length up to searcher.max_length"
            ) from exc
        if raw is None:
            raise SimulationError(
                f"objective {self.name} returned None {where}; it must return the metric "
                "as a finite number (is a `return` missing?)"
            )
        if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
            raise SimulationError(
                f"objective {self.name} returned {raw!r} (a {type(raw).__name__}) {where}; "
                "it must return the metric as a finite number: an int or a float, not a "
                "bool or a string"
            )
        try:
            value = float(raw)
        except (OverflowError, TypeError, ValueError) as exc:
            raise SimulationError(
                f"objective {self.name} returned {raw!r} {where}, which is not a float "
                f"({exc}); return a finite float"
            ) from exc
        if not math.isfinite(value):
            raise SimulationError(
                f"objective {self.name} returned {raw!r} {where}; the metric must be "
                "finite: for a diverged run, return a large finite loss instead"
            )
        return value


def _split(spec: str) -> tuple[Path, str]:
    file, colon, function = spec.rpartition(":")
    if not colon or not file:
        raise SimulationError(
            f"--objective: expected FILE.py:FUNCTION, got {spec!r}; name the file and the "
            "function in it, e.g. examples/simulate/objective.py:objective"
        )
    if not function.isidentifier():
        raise SimulationError(
            f"--objective: {function!r} in {spec!r} is not a function name; write "
            "FILE.py:FUNCTION with the name of a function defined in the file"
        )
    return Path(file), function


def _import(path: Path) -> ModuleType:
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "does not exist"
        raise SimulationError(
            f"--objective: the file {path} {reason}; give the path of a Python file, "
            "relative to the current directory or absolute"
        )
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"_rung_objective_{digest}_{next(_loads)}"
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:  # pragma: no cover - a SourceFileLoader always gives a spec
        raise SimulationError(f"--objective: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    sys.modules[name] = module  # for dataclasses and the like, while the module runs
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() too
        raise SimulationError(
            f"--objective: importing {path} failed with {type(exc).__name__}: "
            f"{exc}{_location(exc)}; fix the file so that it imports cleanly "
            f"(try: python {path})"
        ) from exc
    finally:
        sys.modules.pop(name, None)
        if directory in sys.path:
            sys.path.remove(directory)
    return module


def _max_length(module: ModuleType, path: Path) -> int | None:
    value = getattr(module, "MAX_LENGTH", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SimulationError(
            f"--objective: MAX_LENGTH in {path} must be a whole number of at least 1, got "
            f"{value!r}; set it to the largest length the function is defined for, or "
            "remove it"
        )
    return int(value)


def _optimum(module: ModuleType, path: Path) -> float | None:
    value = getattr(module, "OPTIMUM", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SimulationError(
            f"--objective: OPTIMUM in {path} must be a number, got {value!r}; set it to "
            "the best value reachable at full length, or remove it"
        )
    optimum = float(value)
    if not math.isfinite(optimum):
        raise SimulationError(
            f"--objective: OPTIMUM in {path} must be finite, got {value!r}; set it to the "
            "best value reachable at full length, or remove it"
        )
    return optimum


def load_objective(spec: str) -> Objective:
    """Load ``FILE.py:FUNCTION`` as an :class:`Objective` named ``FILE.py:FUNCTION``
    (the file's base name), with the file's ``MAX_LENGTH`` and ``OPTIMUM`` if it sets
    them."""
    path, name = _split(spec)
    module = _import(path)
    if not hasattr(module, name):
        defined = sorted(
            attr
            for attr, value in vars(module).items()
            if callable(value)
            and not attr.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
        hint = f"; it defines {', '.join(defined)}" if defined else ""
        raise SimulationError(
            f"--objective: {path} has no function {name!r}{hint}; check the name after the colon"
        )
    function = getattr(module, name)
    if not callable(function):
        raise SimulationError(
            f"--objective: {name!r} in {path} is a {type(function).__name__} ({function!r}), "
            f"not a function; define def {name}(hparams: dict, length: int) -> float"
        )
    return Objective(
        function,
        name=f"{path.name}:{name}",
        max_length=_max_length(module, path),
        optimum=_optimum(module, path),
    )
