"""The hostile-input suite: malformed, oversized, forged and adversarial inputs.

Every test here tries inputs of one class against a real part of Rung (on RabbitMQ where
a broker is crossed) and records, for each input, what happened to it through the
``hostile`` fixture: ``hostile.record(cls, case, outcome, seconds)``. The outcome is what
Rung did: ``refused`` (a clear error to the sender), ``dead-lettered`` (with its reason),
``contained`` (the input ran, its harm was bounded: cut, dropped, killed). At the end of
the session the figures (inputs tried per class, and their outcomes, and the slowest
answer) are printed and written to ``$RUNG_HOSTILE_REPORT`` if it is set.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

OUTCOMES = ("refused", "dead-lettered", "contained")


@dataclass
class HostileTally:
    """Inputs tried, per class, with their outcome and how long the answer took."""

    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    slowest_s: dict[str, float] = field(default_factory=dict)
    cases: list[dict[str, object]] = field(default_factory=list)

    def record(self, cls: str, case: str, outcome: str, seconds: float = 0.0) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
        self.outcomes[cls][outcome] += 1
        self.slowest_s[cls] = max(self.slowest_s.get(cls, 0.0), seconds)
        self.cases.append({"class": cls, "case": case, "outcome": outcome, "s": round(seconds, 3)})

    def figures(self) -> dict[str, object]:
        return {
            cls: {
                "tried": sum(counts.values()),
                **dict(sorted(counts.items())),
                "slowest_s": round(self.slowest_s.get(cls, 0.0), 3),
            }
            for cls, counts in sorted(self.outcomes.items())
        }


_TALLY = HostileTally()


@pytest.fixture
def hostile() -> HostileTally:
    return _TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY.cases:
        return
    figures = _TALLY.figures()
    terminalreporter.section("hostile inputs")
    total = 0
    for cls, row in figures.items():
        assert isinstance(row, dict)
        total += int(row["tried"])
        outcomes = ", ".join(f"{k} {v}" for k, v in row.items() if k in OUTCOMES)
        terminalreporter.write_line(
            f"{cls:<28} tried {row['tried']:>5}  ({outcomes}); slowest {row['slowest_s']} s"
        )
    terminalreporter.write_line(f"hostile: {total} inputs in {len(figures)} classes")
    if path := os.environ.get("RUNG_HOSTILE_REPORT"):
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"figures": figures, "cases": _TALLY.cases}, out, indent=2)
