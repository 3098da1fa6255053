"""``rung simulate --objective FILE.py:FUNCTION``: a user's own function as the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rung.cli.main import build_parser
from rung.searcher.config import load_config_file
from rung.searcher.errors import SimulationError
from rung.searcher.simulate import Objective, load_objective, simulate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "simulate" / "objective.py"
EXAMPLE_SPEC = f"{EXAMPLE}:objective"
CONFIG = ROOT / "examples" / "simulate" / "objective_asha.yaml"
HPARAMS = {"optimizer": {"name": "adam", "lr": 0.001}, "layers": 8}


def write(tmp_path: Path, source: str, name: str = "obj.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def objective_from(tmp_path: Path, source: str, function: str = "f") -> Objective:
    return load_objective(f"{write(tmp_path, source)}:{function}")


def run_cli(*argv: str) -> int:
    # The handler itself: rung.cli.main would configure logging for the whole process.
    args = build_parser().parse_args(["simulate", *argv])
    result: int = args.handler(args)
    return result


# ---------------------------------------------------------------- the example
def test_the_example_loads_with_its_name_max_length_and_optimum() -> None:
    objective = load_objective(EXAMPLE_SPEC)
    assert objective.name == "objective.py:objective"
    assert objective.max_length == 100
    assert objective.optimum == 0.05
    # Loss falls with training, and the best configuration ends at the optimum.
    assert objective.evaluate(HPARAMS, 1) > objective.evaluate(HPARAMS, 10)
    assert objective.evaluate(HPARAMS, 10) > objective.evaluate(HPARAMS, 100)
    assert objective.evaluate(HPARAMS, 100) == pytest.approx(0.05)
    worse = {"optimizer": {"name": "sgd", "lr": 0.0001}, "layers": 1}
    assert objective.evaluate(worse, 100) > objective.evaluate(HPARAMS, 100) + 0.3


def test_the_example_runs_through_simulate_the_same_twice() -> None:
    config = load_config_file(CONFIG).config.with_seed(3)
    first = simulate(config, load_objective(EXAMPLE_SPEC), workers=8)
    again = simulate(config, load_objective(EXAMPLE_SPEC), workers=8)
    assert first.state == "COMPLETED"
    assert first.trials == 200
    assert first.workers == 8
    assert first.best_metric is not None
    assert first.regret is not None
    assert first.regret == pytest.approx(first.best_metric - 0.05)
    assert 0 < first.regret < 0.2
    assert first.best_hparams is not None
    assert set(first.best_hparams) == {"optimizer", "layers"}
    assert again.model_dump() == first.model_dump()


def test_the_example_runs_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(CONFIG), "--objective", EXAMPLE_SPEC, "--workers", "8", "--seed", "5", "--json"]
    assert run_cli(*argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["benchmark"] == "objective.py:objective"
    assert summary["workers"] == 8
    assert summary["seed"] == 5
    assert summary["trials"] == 200
    assert summary["regret"] == pytest.approx(summary["best_metric"] - 0.05)
    assert 0 < summary["utilization"] <= 1
    assert run_cli(*argv) == 0
    assert json.loads(capsys.readouterr().out) == summary
    # More workers change the schedule, not the validity of the run.
    assert run_cli(str(CONFIG), "--objective", EXAMPLE_SPEC, "--seed", "5", "--json") == 0
    four = json.loads(capsys.readouterr().out)
    assert four["workers"] == 4
    assert four["sim_time"] > summary["sim_time"]


def test_the_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(CONFIG), "--objective", EXAMPLE_SPEC, "--workers", "8", "--seed", "1") == 0
    out = capsys.readouterr().out
    assert "simulation of objective.py:objective, seed 1" in out
    assert "regret" in out


def test_objective_benchmark_and_curves_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as both:
        run_cli(str(CONFIG), "--objective", EXAMPLE_SPEC, "--benchmark", "mfh6")
    assert both.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as neither:
        run_cli(str(CONFIG))
    assert neither.value.code == 2
    assert "--objective" in capsys.readouterr().err


def test_a_bad_objective_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rung",
            "simulate",
            str(CONFIG),
            "--objective",
            f"{tmp_path / 'missing.py'}:f",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: --objective: the file {tmp_path / 'missing.py'} does not exist" in (
        result.stderr
    )


def test_a_max_length_beyond_the_objectives_is_refused(tmp_path: Path) -> None:
    objective = objective_from(tmp_path, "MAX_LENGTH = 50\ndef f(h, n):\n    return 1.0\n")
    config = load_config_file(CONFIG).config
    with pytest.raises(SimulationError, match=r"obj\.py:f is defined up to length 50"):
        simulate(config, objective)


# ---------------------------------------------------------------- loading
def test_loading_leaves_sys_modules_and_sys_path_as_they_were(tmp_path: Path) -> None:
    write(tmp_path, "SCALE = 3.0\n", name="helper_for_objective.py")
    path = write(
        tmp_path,
        """
        import dataclasses
        from helper_for_objective import SCALE

        @dataclasses.dataclass
        class Point:
            x: float

        def f(hparams, length):
            return SCALE * Point(hparams["x"]).x / length
        """,
    )
    modules, search_path = set(sys.modules), list(sys.path)
    try:
        objective = load_objective(f"{path}:f")
        assert objective.evaluate({"x": 2.0}, 3) == 2.0
        assert list(sys.path) == search_path
        assert not any(name.startswith("_rung_objective") for name in sys.modules)
        assert set(sys.modules) - modules == {"helper_for_objective"}  # the file's own import
    finally:
        sys.modules.pop("helper_for_objective", None)


def test_two_loads_of_one_file_do_not_share_a_module(tmp_path: Path) -> None:
    path = write(tmp_path, "calls = []\ndef f(h, n):\n    return float(len(calls))\n")
    first, second = load_objective(f"{path}:f"), load_objective(f"{path}:f")
    assert first.function is not second.function
    assert first.function.__globals__ is not second.function.__globals__


def test_the_function_gets_a_fresh_copy_of_the_nested_hparams(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path,
        """
        def f(hparams, length):
            value = hparams["opt"]["lr"] * length
            hparams["opt"]["lr"] = 99.0   # a careless function
            return value
        """,
    )
    hparams = {"opt": {"lr": 0.5}}
    assert objective.evaluate(hparams, 4) == 2.0
    assert objective.evaluate(hparams, 4) == 2.0
    assert hparams == {"opt": {"lr": 0.5}}


def test_ints_and_numpy_like_reals_become_floats(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path,
        """
        from fractions import Fraction
        def f(h, n):
            return 3 if n == 1 else Fraction(1, 4)
        """,
    )
    assert objective.evaluate({}, 1) == 3.0
    assert isinstance(objective.evaluate({}, 1), float)
    assert objective.evaluate({}, 2) == 0.25


def test_numpy_numbers_are_accepted_and_numpy_bools_and_nans_refused(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path,
        """
        import numpy as np
        def f(h, n):
            return {1: np.float32(0.25), 2: np.int64(3), 3: np.bool_(True), 4: np.float64("nan")}[n]
        """,
    )
    assert objective.evaluate({}, 1) == 0.25
    assert objective.evaluate({}, 2) == 3.0
    with pytest.raises(SimulationError, match=r"returned (np\.)?True_? \(a bool_?\)"):
        objective.evaluate({}, 3)
    with pytest.raises(
        SimulationError, match=r"returned (np\.float64\(nan\)|nan) .*must be finite"
    ):
        objective.evaluate({}, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("objective.py", r"expected FILE\.py:FUNCTION, got 'objective\.py'"),
        (":f", r"expected FILE\.py:FUNCTION, got ':f'"),
        ("objective.py:", r"'' in 'objective\.py:' is not a function name"),
        ("objective.py:not-a-name", r"'not-a-name' in .* is not a function name"),
    ],
)
def test_a_spec_without_file_and_function_is_refused(spec: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        load_objective(spec)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match=r"the file .*nowhere\.py does not exist"):
        load_objective(f"{tmp_path / 'nowhere.py'}:f")
    with pytest.raises(SimulationError, match="is a directory"):
        load_objective(f"{tmp_path}:f")


def test_a_missing_function_is_refused_with_what_the_file_defines(tmp_path: Path) -> None:
    path = write(tmp_path, "def loss(h, n):\n    return 1.0\ndef accuracy(h, n):\n    return 0.0\n")
    with pytest.raises(SimulationError) as caught:
        load_objective(f"{path}:objective")
    assert "has no function 'objective'" in str(caught.value)
    assert "it defines accuracy, loss" in str(caught.value)


def test_a_non_callable_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "f = 3\n")
    with pytest.raises(SimulationError, match=r"'f' in .*obj\.py is a int \(3\), not a function"):
        load_objective(f"{path}:f")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('no GPU here')\n", r"RuntimeError: no GPU here at .*obj\.py:1"),
        ("import no_such_module_for_rung\n", r"ModuleNotFoundError: No module named"),
        ("def f(h, n)\n    return 1\n", r"SyntaxError"),
        ("import sys\nsys.exit(3)\n", r"SystemExit: 3"),
    ],
)
def test_a_file_that_fails_to_import_is_refused(tmp_path: Path, source: str, message: str) -> None:
    path = write(tmp_path, source)
    with pytest.raises(SimulationError, match=rf"importing .*obj\.py failed with {message}"):
        load_objective(f"{path}:f")
    assert not any(name.startswith("_rung_objective") for name in sys.modules)
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("MAX_LENGTH = 0", "MAX_LENGTH in .* must be a whole number of at least 1, got 0"),
        ("MAX_LENGTH = 10.5", "MAX_LENGTH in .* must be a whole number of at least 1, got 10.5"),
        ("OPTIMUM = 'low'", "OPTIMUM in .* must be a number, got 'low'"),
        ("OPTIMUM = float('nan')", "OPTIMUM in .* must be finite, got nan"),
    ],
)
def test_bad_max_length_or_optimum_is_refused(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        objective_from(tmp_path, f"{source}\ndef f(h, n):\n    return 1.0\n")


# ---------------------------------------------------------------- calling
def test_an_exception_in_the_function_names_it_the_inputs_and_the_line(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path,
        """
        def f(hparams, length):
            return 1.0 / (hparams["x"] - 0.5)
        """,
    )
    with pytest.raises(SimulationError) as caught:
        objective.evaluate({"x": 0.5}, 7)
    message = str(caught.value)
    assert "objective obj.py:f raised ZeroDivisionError: float division by zero" in message
    assert "obj.py:3 in f" in message
    assert 'for hparams {"x": 0.5} at length 7' in message
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("float('nan')", r"returned nan .*the metric must be finite"),
        ("float('inf')", r"returned inf .*the metric must be finite"),
        ("-float('inf')", r"returned -inf .*the metric must be finite"),
        ("10 ** 400", r"which is not a float"),
        ("'0.5'", r"returned '0\.5' \(a str\) .*not a bool or a string"),
        ("True", r"returned True \(a bool\) .*not a bool or a string"),
        ("None", r"returned None .*is a `return` missing\?"),
        ("[0.5]", r"returned \[0\.5\] \(a list\)"),
    ],
)
def test_a_result_that_is_not_a_finite_number_is_refused(
    tmp_path: Path, returned: str, message: str
) -> None:
    objective = objective_from(tmp_path, f"def f(hparams, length):\n    return {returned}\n")
    with pytest.raises(SimulationError, match=message) as caught:
        objective.evaluate({"lr": 0.1}, 2)
    assert "objective obj.py:f returned" in str(caught.value)
    assert 'for hparams {"lr": 0.1} at length 2' in str(caught.value)


def test_a_nondeterministic_function_is_refused(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path,
        """
        import itertools
        calls = itertools.count()
        def f(hparams, length):
            return float(next(calls))
        """,
    )
    with pytest.raises(SimulationError) as caught:
        objective.evaluate({"lr": 0.1}, 3)
    message = str(caught.value)
    assert "objective obj.py:f is not deterministic" in message
    assert 'for hparams {"lr": 0.1} at length 3 it returned 0.0, then 1.0' in message


def test_a_nondeterministic_function_fails_the_simulation(tmp_path: Path) -> None:
    objective = objective_from(
        tmp_path, "import random\ndef f(h, n):\n    return random.random()\n"
    )
    config = load_config_file(CONFIG).config
    with pytest.raises(SimulationError, match="is not deterministic"):
        simulate(config, objective)


def test_an_objective_can_be_built_from_a_python_function() -> None:
    objective = Objective(lambda h, n: h["x"] / n, name="inline", max_length=10, optimum=0.0)
    assert objective.evaluate({"x": 1.0}, 4) == 0.25
    with pytest.raises(SimulationError, match=r"defined for lengths 1\.\.10 \(its MAX_LENGTH\)"):
        objective.evaluate({"x": 1.0}, 11)
