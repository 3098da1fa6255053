"""The soak: many random faults on a running cluster, then the checker, again and again.

Off unless asked for: ``pytest tests/faults/test_soak.py --soak 120`` injects 120 faults,
drawn from a seeded schedule (``--soak-seed``; the seed is printed). Experiments of the
shared scenario run one after another, each under a stream of faults, until enough
faults have been injected; each one must pass the checker against the fault-free run.
The figures are printed at the end, and written to ``soak.json`` in the test's
directory.

Faults: SIGKILL, SIGTERM or SIGSTOP (for a few seconds) on a worker and its trials,
SIGKILL on the searcher, links reset, a partition, a slow network (all through the TCP
proxy), ``close_all_connections``, a broker ``stop_app``/``start_app``, poison messages,
and training scripts that crash, hang, stop early or report NaN.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.faults.checker import Baseline
from tests.faults.scenario import (
    altered,
    baseline_of,
    command_fault,
    config_text,
    fault_env,
    finish,
    poison,
    start_experiment,
    trial_pids,
)
from tests.proxy import FaultProxy

pytestmark = pytest.mark.rabbitmq

TRIALS = 20
WORKER_TIMEOUT_S = "3"


def _config() -> str:
    # Restarts are not what the soak counts: a crash never errors a trial here. Steps of
    # 0.1 s make a round last about half a minute, for a dozen faults or so.
    return config_text(trials=TRIALS, step_sleep=0.1, concurrent=5, max_restarts=1000)


class Soak:
    """The cluster under faults, and the fault menu."""

    def __init__(
        self, cluster: Cluster, proxy: FaultProxy, tmp_path: Path, rng: random.Random
    ) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.tmp_path = tmp_path
        self.rng = rng
        self.fault_dir = tmp_path / "faults"
        self.env = fault_env(self.fault_dir)
        self.workers: list[str] = []
        self.next_worker = 0
        self.searchers = 0
        self.best_trial_id = 0
        self.done: Counter[str] = Counter()
        self.timers: list[threading.Timer] = []

    def add_worker(self) -> None:
        self.next_worker += 1
        name = f"w{self.next_worker}"
        self.cluster.start_worker(
            name, 2, "--heartbeat", "0.5", "--hang-timeout", "3", env=self.env
        )
        self.workers.append(name)

    def _pick_worker(self) -> str:
        return self.rng.choice(self.workers)

    def _signal_trials(self, worker: str, sig: int) -> None:
        for pid in trial_pids(self.cluster, worker):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue

    # ------------------------------------------------------------------ faults
    def kill_worker(self) -> None:
        name = self._pick_worker()
        self.cluster.processes[name].send_signal(signal.SIGKILL)
        self.workers.remove(name)
        self.add_worker()

    def term_worker(self) -> None:
        name = self._pick_worker()
        self.cluster.processes[name].send_signal(signal.SIGTERM)
        self.workers.remove(name)
        self.add_worker()

    def freeze_worker(self) -> None:
        name = self._pick_worker()
        process = self.cluster.processes[name]
        process.send_signal(signal.SIGSTOP)
        self._signal_trials(name, signal.SIGSTOP)

        def thaw() -> None:
            self._signal_trials(name, signal.SIGCONT)
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)

        # Sometimes past the worker timeout: the worker is declared lost, then comes back
        # and must be fenced off.
        self._later(self.rng.uniform(1, 6), thaw)

    def kill_searcher(self) -> None:
        self.cluster.stop("searcher", signal.SIGKILL)
        self.searchers += 1
        name = f"searcher-{self.searchers}"
        self.cluster.start(
            name,
            "searcher",
            "--state-dir",
            str(self.cluster.state_dir),
            "--worker-timeout",
            WORKER_TIMEOUT_S,
        )
        self.cluster.wait_log(name, "searcher ready", timeout=60)
        self.cluster.processes["searcher"] = self.cluster.processes.pop(name)

    def reset_links(self) -> None:
        self.proxy.reset()

    def partition(self) -> None:
        self.proxy.blackhole()
        self._later(self.rng.uniform(1, 8), self.proxy.heal)

    def slow_network(self) -> None:
        self.proxy.delay(self.rng.uniform(0.01, 0.1))
        self._later(self.rng.uniform(2, 6), self.proxy.heal)

    def drop_connections(self) -> None:
        _rabbitmqctl("close_all_connections", "soak")

    def restart_broker(self) -> None:
        _rabbitmqctl("stop_app")
        try:
            _rabbitmqctl("start_app")
        finally:
            _rabbitmqctl("await_startup")

    def poison_messages(self) -> None:
        tag = f"poison/{self.done.total()}"
        key, body = self.rng.choice(
            [
                ("events", b"{not json"),
                ("events", altered(tag, type="no_such_event")),
                ("events", altered(tag, schema_version=7)),
                ("work", b"\x80\x04\x95pickle"),
            ]
        )
        poison(self.cluster, [(key, body, tag)])

    def script_fault(self) -> None:
        trial_id = self.rng.randint(1, TRIALS)
        if (self.fault_dir / f"trial-{trial_id}.json").exists():
            return
        actions = ["crash", "hang"]
        if trial_id != self.best_trial_id:  # these change a trial's result
            actions += ["exit0", "nan"]
        command_fault(self.fault_dir, trial_id, self.rng.choice(actions), self.rng.randint(1, 30))

    # ------------------------------------------------------------------ the schedule
    def menu(self) -> list[tuple[Callable[[], None], int]]:
        return [
            (self.kill_worker, 3),
            (self.term_worker, 1),
            (self.freeze_worker, 2),
            (self.kill_searcher, 2),
            (self.reset_links, 2),
            (self.partition, 1),
            (self.slow_network, 1),
            (self.drop_connections, 1),
            (self.restart_broker, 1),
            (self.poison_messages, 1),
            (self.script_fault, 3),
        ]

    def inject(self) -> str:
        faults, weights = zip(*self.menu(), strict=True)
        fault = self.rng.choices(faults, weights)[0]
        fault()
        name = str(fault.__name__)
        self.done[name] += 1
        return name

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.start()
        self.timers.append(timer)

    def settle(self) -> None:
        """Let every delayed heal run now."""
        for timer in self.timers:
            if timer.is_alive():
                timer.cancel()
                timer.function()
        self.timers.clear()
        self.proxy.heal()


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _state(cluster: Cluster, experiment_id: str) -> str | None:
    described = cluster.rung("experiment", "describe", experiment_id, "--json", timeout=60)
    if described.returncode != 0:
        return None  # the searcher or the broker is down just now
    return str(json.loads(described.stdout)["state"])


@pytest.mark.timeout(3 * 3600)
def test_soak(request: pytest.FixtureRequest, tmp_path: Path, proxy: FaultProxy) -> None:
    wanted: int = request.config.getoption("--soak")
    if not wanted:
        pytest.skip("the soak runs only when asked: pytest tests/faults/test_soak.py --soak 120")
    seed = request.config.getoption("--soak-seed")
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    say = request.config.pluginmanager.get_plugin("terminalreporter").write_line  # type: ignore[union-attr]
    say(f"soak: {wanted} faults, seed {seed}")

    for directory in ("clean", "soak"):
        (tmp_path / directory).mkdir()
    with running_cluster(tmp_path / "clean") as clean:
        clean.start_worker("w1", 2)
        clean.start_worker("w2", 2)
        first = start_experiment(clean, tmp_path / "clean", _config())
        clean_run = finish(clean, first, None, bound_s=300, planned_trials=TRIALS)
    baseline: Baseline = baseline_of(clean_run)
    say(f"soak: fault-free run: best trial {baseline.best_trial_id}, {baseline.seconds:.1f} s")

    rounds: list[dict[str, Any]] = []
    service_url = proxy.url("heartbeat=2")
    searcher_args = ("--worker-timeout", WORKER_TIMEOUT_S)
    started = time.monotonic()
    with running_cluster(tmp_path / "soak", *searcher_args, service_url=service_url) as cluster:
        soak = Soak(cluster, proxy, tmp_path / "soak", rng)
        soak.best_trial_id = baseline.best_trial_id
        for _ in range(3):
            soak.add_worker()
        while soak.done.total() < wanted:
            # A fresh fault directory per round: commands name trials by number.
            for stale in soak.fault_dir.glob("trial-*"):
                stale.unlink()
            experiment_id = start_experiment(cluster, tmp_path / "soak", _config())
            injected = 0
            while _state(cluster, experiment_id) in (None, "ACTIVE") and soak.done.total() < wanted:
                time.sleep(rng.uniform(0.3, 2.0))  # the pace of the faults, not a wait
                soak.inject()
                injected += 1
            soak.settle()
            report = finish(cluster, experiment_id, baseline, bound_s=600, planned_trials=TRIALS)
            rounds.append(
                {
                    "experiment_id": experiment_id,
                    "faults": injected,
                    "seconds": round(report.seconds, 1),
                    "attempts": report.attempts,
                    "restarts": report.restarts,
                    "dead_letters": len(report.dead_letters),
                }
            )
            say(f"soak: round {len(rounds)}: {rounds[-1]}")
    figures = {
        "seed": seed,
        "faults": dict(soak.done),
        "faults_total": soak.done.total(),
        "rounds": rounds,
        "trials": TRIALS * len(rounds),
        "fault_free_seconds": round(baseline.seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=2))
    say(f"soak: {json.dumps(figures)}")
    assert soak.done.total() >= wanted
