"""Custom search methods loaded from the experiment's context directory."""

from __future__ import annotations

import textwrap
from pathlib import Path
from random import Random

import pytest

from rung.searcher.errors import CustomSearcherError
from rung.searcher.experiment import Experiment
from rung.searcher.methods import build_method
from rung.searcher.ops import Shutdown

from .helpers import Driver, make_config

HALVING = textwrap.dedent('''
    """Train every trial to 1, then only the best half to the full length."""
    from pydantic import BaseModel, Field

    from rung.searcher.methods import SearchMethod
    from rung.searcher.ops import Close, ValidateAfter


    class State(BaseModel):
        results: dict[str, float] = Field(default_factory=dict)
        promoted: list[str] = Field(default_factory=list)


    class Halving(SearchMethod[State]):
        name = "halving"
        State = State

        def __init__(self, config):
            self.trials = int(config.options["trials"])
            self.full = config.max_length.units
            self.state = State()

        def initial_operations(self, ctx):
            ops = []
            for _ in range(self.trials):
                create = ctx.create()
                ops += [create, ValidateAfter(request_id=create.request_id, length=1)]
            return ops

        def validation_completed(self, ctx, request_id, metric, length):
            if length == self.full:
                return [Close(request_id=request_id)]
            self.state.results[request_id] = metric
            if len(self.state.results) < self.trials:
                return []
            ranked = sorted(self.state.results, key=self.state.results.get)
            keep = ranked[: len(ranked) // 2]
            self.state.promoted = keep
            return [ValidateAfter(request_id=r, length=self.full) for r in keep] + [
                Close(request_id=r) for r in ranked[len(ranked) // 2:]]

        def trial_exited_early(self, ctx, request_id, reason):
            return []

        def progress(self, ctx):
            return len(self.state.results) / self.trials
''')


def test_a_custom_method_runs_from_the_context_directory(tmp_path: Path) -> None:
    (tmp_path / "my_search.py").write_text(HALVING)
    config = make_config("{name: custom, class: 'my_search:Halving', max_length: 10, trials: 6}")
    method = build_method(config, context_dir=tmp_path)
    exp = Experiment(config, method)
    Driver(exp, Random(0), metric=lambda h, n: float(h["x"])).run()
    assert exp.state.shutdown == Shutdown()
    full = sorted(t.hparams["x"] for t in exp.trials.values() if t.trained == 10)  # type: ignore[type-var]
    every = sorted(t.hparams["x"] for t in exp.trials.values())  # type: ignore[type-var]
    assert full == every[:3]  # the best half by the metric
    restored = build_method(config, context_dir=tmp_path)
    restored.restore(method.snapshot())
    assert restored.snapshot() == method.snapshot()


def test_a_custom_methods_own_rules_attribute_is_its_own(tmp_path: Path) -> None:
    """The built-in methods' rules (RULES) are set on the one-shot methods only: a custom
    method's ``rules``, a name of its own, is left as it made it."""
    (tmp_path / "my_search.py").write_text(
        HALVING
        + textwrap.dedent("""
            class WithRules(Halving):
                def __init__(self, config):
                    super().__init__(config)
                    self.rules = {"promote": "best half"}


            class RulesProperty(Halving):
                @property
                def rules(self):
                    return "read only"
        """)
    )
    for name, expected in (("WithRules", {"promote": "best half"}), ("RulesProperty", "read only")):
        config = make_config(
            f"{{name: custom, class: 'my_search:{name}', max_length: 10, trials: 2}}"
        )
        for rules in (1, 2):
            method = build_method(config, context_dir=tmp_path, rules=rules)
            assert getattr(method, "rules", None) == expected


def test_sub_package_modules_load(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "search.py").write_text(HALVING)
    config = make_config("{name: custom, class: 'pkg.search:Halving', max_length: 4, trials: 2}")
    assert build_method(config, context_dir=tmp_path).name == "halving"


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        ({}, "absent_mod:X", "module 'absent_mod' was not found"),
        ({"m.py": "X = 1\n"}, "m:Nope", "module 'm' has no attribute 'Nope'"),
        ({"m.py": "class X:\n    pass\n"}, "m:X", "is not a subclass of rung's SearchMethod"),
        (
            {"m.py": "raise RuntimeError('boom')\n"},
            "m:X",
            "importing .* failed with RuntimeError: boom",
        ),
        (
            {"m.py": HALVING.replace('int(config.options["trials"])', "1 / 0")},
            "m:Halving",
            "building m:Halving\\(config\\) failed with ZeroDivisionError",
        ),
    ],
)
def test_load_errors_say_what_to_fix(
    tmp_path: Path, files: dict[str, str], spec: str, message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = make_config(f"{{name: custom, class: '{spec}', max_length: 4, trials: 2}}")
    with pytest.raises(CustomSearcherError, match=message):
        build_method(config, context_dir=tmp_path)
