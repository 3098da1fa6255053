"""Objectives for the simulator: a metric for any hyperparameters at any length.

* ``mfh6`` and ``mfh6_bad``: the multi-fidelity Hartmann-6 function of
  ``shared/reference/benchmarks.md`` (low fidelities informative, and misleading).
* ``lrsched``: a learning-rate schedule matters (:mod:`rung.searcher.simulate.schedule`);
* :class:`Curves`: learning curves from JSON lines, one configuration a line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rung.searcher.errors import SimulationError
from rung.searcher.simulate.hartmann import OPTIMUM, PRESETS, Z_MAX, mf_hartmann6
from rung.searcher.simulate.schedule import LRSchedule
from rung.searcher.space import flatten

__all__ = ["BENCHMARKS", "Benchmark", "Curves", "MFHartmann6", "benchmark_named"]


class Benchmark(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def max_length(self) -> int | None:
        """The largest length the objective is defined for, if it has one."""

    @property
    def optimum(self) -> float | None:
        """The best value reachable at full length, when known (for regret)."""

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float: ...


_NAMES = tuple(f"x{i}" for i in range(6))


@dataclass(frozen=True)
class MFHartmann6:
    """Multi-fidelity Hartmann-6 over x0..x5 in [0, 1], fidelity z in 1..100."""

    name: str
    bias: float
    noise: float
    max_length: int | None = Z_MAX
    optimum: float | None = OPTIMUM

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float:
        flat = flatten(hparams)
        try:
            x = tuple(float(flat[n]) for n in _NAMES)
        except (KeyError, TypeError, ValueError) as exc:
            raise SimulationError(
                f"benchmark {self.name} needs numeric hyperparameters x0..x5 in [0, 1], got "
                f"{sorted(flat)}; see examples/simulate/mfh6_asha.yaml"
            ) from exc
        if not 1 <= length <= Z_MAX:
            raise SimulationError(
                f"benchmark {self.name} is defined for lengths 1..{Z_MAX}, got {length}; "
                f"set searcher.max_length to at most {Z_MAX}"
            )
        return mf_hartmann6(x, length, bias=self.bias, noise=self.noise)


BENCHMARKS: dict[str, Benchmark] = {
    name: MFHartmann6(name, bias=preset["bias"], noise=preset["noise"])
    for name, preset in PRESETS.items()
}
BENCHMARKS["lrsched"] = LRSchedule()


def benchmark_named(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise SimulationError(
            f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARKS)}, "
            "or give learning curves with --curves FILE"
        ) from None


@dataclass
class _Curve:
    flat: dict[str, Any]
    lengths: list[int]
    values: list[float]

    def at(self, length: int) -> float:
        # The value at the largest recorded length <= length (the first one below it).
        best = self.values[0]
        for recorded, value in zip(self.lengths, self.values, strict=True):
            if recorded > length:
                break
            best = value
        return best


@dataclass
class Curves:
    """Learning curves, one JSON object a line: ``{"hparams": {...}, "curve": ...}``.

    ``curve`` is a list (the value at length 1, 2, ...) or a mapping from length to value.
    A trial follows the curve whose hyperparameters equal its own, or else the nearest
    one (numbers compared relative to their range in the file, other values by equality).
    At a length between recorded ones it has the value of the last recorded length.
    """

    curves: list[_Curve]
    name: str = "curves"
    max_length: int | None = None
    optimum: float | None = None
    _ranges: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _cache: dict[str, _Curve] = field(default_factory=dict, repr=False)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "curves") -> Curves:
        curves = [
            _parse_curve(line, number, source)
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
        if not curves:
            raise SimulationError(
                f"{source}: no learning curves found; write one JSON "
                'object a line: {"hparams": {...}, "curve": [...]}'
            )
        found = cls(curves, name=source, max_length=max(c.lengths[-1] for c in curves))
        found._ranges = _numeric_ranges(curves)
        return found

    def _nearest(self, flat: dict[str, Any]) -> _Curve:
        key = json.dumps(flat, sort_keys=True, default=str)
        if key in self._cache:
            return self._cache[key]

        def distance(curve: _Curve) -> float:
            total = 0.0
            for name in flat.keys() | curve.flat.keys():
                a, b = flat.get(name), curve.flat.get(name)
                if (
                    name in self._ranges
                    and isinstance(a, int | float)
                    and isinstance(b, int | float)
                ):
                    low, high = self._ranges[name]
                    total += ((a - b) / ((high - low) or 1.0)) ** 2
                else:
                    total += 0.0 if a == b else 1.0
            return total

        chosen = min(self.curves, key=distance)
        self._cache[key] = chosen
        return chosen

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float:
        return self._nearest(flatten(hparams)).at(length)


def _parse_curve(line: str, number: int, source: str) -> _Curve:
    where = f"{source}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SimulationError(
            f"{where}: not valid JSON ({exc.msg}); write one JSON object a line"
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("hparams"), dict):
        raise SimulationError(
            f'{where}: needs an object with "hparams" (a mapping) and '
            f'"curve", got {line.strip()[:80]!r}'
        )
    raw = record.get("curve")
    if isinstance(raw, list):
        points = [(i + 1, v) for i, v in enumerate(raw)]
    elif isinstance(raw, dict):
        try:
            points = sorted((int(k), v) for k, v in raw.items())
        except ValueError as exc:
            raise SimulationError(f"{where}: curve keys must be whole lengths") from exc
    else:
        raise SimulationError(
            f'{where}: "curve" must be a list of values or a mapping '
            f"from length to value, got {raw!r}"
        )
    if not points or not all(isinstance(v, int | float) for _, v in points):
        raise SimulationError(f"{where}: the curve must hold at least one number, and only numbers")
    return _Curve(flatten(record["hparams"]), [p[0] for p in points], [float(p[1]) for p in points])


def _numeric_ranges(curves: list[_Curve]) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    for curve in curves:
        for name, value in curve.flat.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                low, high = ranges.get(name, (value, value))
                ranges[name] = (min(low, value), max(high, value))
    return ranges
