"""Hostile display: names, labels, ids and log lines that are rich markup or terminal
escape sequences are shown as written, and never crash a command (issue 16: an experiment
named ``[/]`` crashed ``rung experiment list`` for every user)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import rung
from rung.broker.schemas import ExperimentSummary, TrialSummary, WorkerInfo
from rung.cli.render import (
    console_text,
    experiments_table,
    print_summary,
    print_trial,
    safe_text,
    trials_table,
    workers_view,
)
from tests.e2e.conftest import EXAMPLES, Cluster, running_cluster
from tests.hostile.conftest import HostileTally
from tests.support import AMQP_URL

# Markup that rich would parse (a closing tag with nothing open raises), a link that
# would make the text a hyperlink, styles, and escape sequences for the terminal.
HOSTILE_NAMES = {
    "closing tag": "[/]",
    "link": "[link=https://evil.example]x[/link]",
    "style": "[bold red]alarm[/bold red]",
    "unbalanced": "[b]never closed",
    "emoji code": ":skull:",
    "terminal title": "\x1b]0;pwned\x07",
    "clear screen": "\x1b[2J\x1b[H",
    "carriage return": "ok\rFAILED",
    "bidi override": "abc\u202edcba",
}


def render(*items: object) -> str:
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None, force_terminal=False)
    for item in items:
        console.print(item)
    return out.getvalue()


def summary(name: str) -> ExperimentSummary:
    trial = TrialSummary(
        trial_id=1,
        request_id="r1",
        hparams={"h": name},
        state="RUNNING",
        length=1,
        metric=None,
        restarts=0,
        attempt=1,
        latest_checkpoint=None,
        worker_id=name,
    )
    return ExperimentSummary(
        experiment_id="e1",
        name=name,
        state="ACTIVE",
        progress=0.5,
        trials=[trial],
        best_trial=None,
        event_log=name,
        labels=[name],
        description=name,
        message=name,
        waiting=[f"trial 1 needs 8 slots {name}"],
    )


def expected(text: str) -> str:
    """How a hostile string shows: as written, its control characters as \\xNN."""
    return safe_text(text)


@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_hostile_strings_render_literally_in_every_view(case: str, hostile: HostileTally) -> None:
    name = HOSTILE_NAMES[case]
    started = time.monotonic()
    hostile_summary = summary(name)
    worker = WorkerInfo(
        worker_id=name,
        slots=1,
        free_slots=0,
        gpus=[name],
        running=[name],
        last_seen_s=0.0,
        lost=False,
    )
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)
    print_summary(hostile_summary, console)
    print_trial(hostile_summary.trials[0], console)
    shown = out.getvalue() + render(
        experiments_table([hostile_summary]),
        trials_table(hostile_summary),
        workers_view([worker], [hostile_summary]),
    )
    assert expected(name) in shown
    assert "\x1b" not in shown
    assert "\r" not in shown
    assert "\u202e" not in shown
    hostile.record("display", f"rendered: {case}", "contained", time.monotonic() - started)


def test_log_lines_to_a_terminal_show_control_characters_escaped() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    line = "epoch 1\x1b[2K\r\x1b]0;pwned\x07 done"
    assert console_text(line, Tty()) == "epoch 1\\x1b[2K\\x0d\\x1b]0;pwned\\x07 done"
    # To a pipe or a file, the bytes are the user's: kept as written.
    assert console_text(line, io.StringIO()) == line


def rung_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``rung ARGS`` as a user runs it, with a terminal wide enough for whole names."""
    return subprocess.run(
        [sys.executable, "-m", "rung", *args],
        capture_output=True,
        text=True,
        env={**cluster.env(), "COLUMNS": "300"},
        timeout=120,
        check=False,
    )


@pytest.mark.rabbitmq
async def test_rung_experiment_list_shows_hostile_names_and_does_not_crash(
    tmp_path: Path, hostile: HostileTally
) -> None:
    with running_cluster(tmp_path) as cluster:
        async with rung.Client(AMQP_URL, namespace=cluster.namespace) as client:
            created = {}
            for case in ("closing tag", "link", "terminal title"):
                config = {
                    "name": HOSTILE_NAMES[case],
                    "labels": [HOSTILE_NAMES[case]],
                    "entrypoint": "python3 1_metrics.py",
                    "searcher": {"name": "single", "metric": "x", "max_length": 1},
                    "max_restarts": 0,
                }
                experiment = await client.create_experiment(config, EXAMPLES)
                created[case] = experiment.id
        for case, experiment_id in created.items():
            started = time.monotonic()
            listed = rung_cli(cluster, "experiment", "list")
            assert listed.returncode == 0, listed.stderr
            assert experiment_id in listed.stdout
            # Piped, not a terminal: rich shows the text, control characters escaped.
            assert expected(HOSTILE_NAMES[case]) in listed.stdout
            described = rung_cli(cluster, "experiment", "describe", experiment_id)
            assert described.returncode == 0, described.stderr
            hostile.record(
                "display", f"rung experiment list: {case}", "contained", time.monotonic() - started
            )
