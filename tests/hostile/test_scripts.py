"""Adversarial training scripts (tests/hostile/scripts/) run by a real TrialRun, with both
ways of starting them, and end to end beside a well-behaved experiment.

Each script misbehaves in one way: a tqdm bar, a 10 MiB line, binary output, no trailing
newline, a 200 MiB flood, metrics and metadata at and over the limits, deeply nested
JSON, raw requests that bypass the Core API, silence, children left behind, a hunt for
the worker's password. Supervision must hold in every case: ``wait()`` returns, the
process (and its group) is gone, ``trial_exited`` goes out once, the output is cut,
rate-limited and bounded, and every refusal names its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import rung
from rung.broker.errors import BrokerUnavailableError
from rung.broker.limits import (
    CHANNEL_REQUEST_BYTES,
    MAX_LOG_BATCH_BYTES,
    MAX_LOG_BATCH_LINES,
    MAX_LOG_LINE_CHARS,
    MAX_METRICS_BYTES,
    TRIAL_LOG_BURST_BYTES,
    TRIAL_LOG_BYTES_PER_S,
)
from rung.broker.schemas import (
    CheckpointSaved,
    ExitReason,
    LogLines,
    MetricsReported,
    OpCompleted,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.worker.channels import ChannelServer
from rung.worker.core._channel import hello
from rung.worker.output import cost, cut_note
from rung.worker.spawn import ExecSpawner, ForkServer, Spawner
from rung.worker.trial_run import TrialRun
from tests.hostile.conftest import HostileTally
from tests.support import AMQP_URL, wait_for

E = TypeVar("E")
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "core_api"
SECRET = "s3cret-b4d-pa55w0rd"  # noqa: S105 (a marker to look for)


@dataclass
class Ran:
    """What a TrialRun sent for one script, and how it ended."""

    run: TrialRun
    reason: ExitReason
    events: list[Body]
    seconds: float
    rss_growth_kib: int = 0

    def lines(self, stream: str) -> list[str]:
        return [
            line.text
            for event in self.events
            if isinstance(event, LogLines)
            for line in event.lines
            if line.stream == stream
        ]

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def exited(self) -> TrialExited:
        [exited] = self.of(TrialExited)  # exactly once
        return exited


@dataclass
class Harness:
    tmp_path: Path
    spawner: Spawner
    method: str
    runs: list[TrialRun] = field(default_factory=list)

    def make(
        self,
        script: str,
        *args: str,
        hang_timeout_s: float | None = None,
        channels: ChannelServer | None = None,
    ) -> tuple[TrialRun, list[Body]]:
        run_dir = self.tmp_path / f"run-{len(self.runs)}"
        shutil.copytree(SCRIPTS, run_dir)
        cmd = RunTrial(
            experiment_id="hostile",
            trial_id=len(self.runs) + 1,
            request_id="r",
            attempt=1,
            length=9,
            hparams={},
            trial_seed=7,
            context_hash="0" * 64,
            entrypoint=["python3", script, *args],
            slots=1,
            checkpoint_root=str(self.tmp_path / "checkpoints"),
            max_restarts=0,
        )
        events: list[Body] = []

        async def emit(body: Body, *, message_id: str | None = None) -> str:
            events.append(body)
            return message_id or f"m{len(events)}"

        async def best() -> float | None:
            return None

        run = TrialRun(
            cmd,
            worker_id="w",
            run_dir=run_dir,
            gpus=[],
            slot_ids=[0],
            emit=emit,
            best_validation=best,
            hang_timeout_s=hang_timeout_s,
            spawner=self.spawner,
            channels=channels,
        )
        run.stop_ops("close")  # one operation, then the script is told it is done
        self.runs.append(run)
        return run, events

    async def run(
        self, script: str, *args: str, hang_timeout_s: float | None = None, watch_rss: bool = False
    ) -> Ran:
        run, events = self.make(script, *args, hang_timeout_s=hang_timeout_s)
        started = time.monotonic()
        assert await run.start()
        sampler = asyncio.create_task(_peak_rss_kib()) if watch_rss else None
        before = _rss_kib()
        try:
            reason = await asyncio.wait_for(run.wait(), timeout=120)
        finally:
            peak = 0
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    peak = await sampler
        seconds = time.monotonic() - started
        # Whenever wait() returns, the process is reaped and its channel gone.
        assert run.process is not None
        assert run.process.returncode is not None
        assert run.channel_dir is not None
        assert not run.channel_dir.exists()
        return Ran(run, reason, events, seconds, max(0, peak - before))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _peak_rss_kib() -> int:
    peak = 0
    try:
        while True:
            peak = max(peak, _rss_kib())
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        return peak


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not ours does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(params=["exec", "fork-server"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    spawner: Spawner = ExecSpawner() if request.param == "exec" else ForkServer()
    instance = Harness(tmp_path, spawner, request.param)
    try:
        yield instance
    finally:
        for run in instance.runs:
            run.kill("the test is over")
        await spawner.close()


# ---------------------------------------------------------------------- output
async def test_a_tqdm_progress_bar(harness: Harness, hostile: HostileTally) -> None:
    """Over 1 MiB of redraws without a newline made wait() raise (issue 16): now each
    redraw is a line, and the trial completes."""
    ran = await harness.run("tqdm_bar.py", "30000")
    assert ran.reason is ExitReason.COMPLETED, ran.exited.message
    bars = [line for line in ran.lines("stderr") if line.startswith("training:")]
    assert sum(cost(line) for line in bars) > 1024 * 1024  # all without a "\n"
    assert "30000/30000" in bars[-1]
    assert "tqdm done" in ran.lines("stdout")
    assert ran.exited.stderr_tail[-1].startswith("training: 100%")
    hostile.record("script output", f"tqdm bar ({harness.method})", "contained", ran.seconds)


async def test_a_10_mib_line(harness: Harness, hostile: HostileTally) -> None:
    ran = await harness.run("long_line.py")
    assert ran.reason is ExitReason.COMPLETED
    long, after = ran.lines("stdout")[:2]
    assert long == "L" * MAX_LOG_LINE_CHARS + cut_note(10 * 1024 * 1024 - MAX_LOG_LINE_CHARS)
    assert after == "after the long line"
    hostile.record("script output", f"10 MiB line ({harness.method})", "contained", ran.seconds)


async def test_binary_output(harness: Harness, hostile: HostileTally) -> None:
    ran = await harness.run("binary.py")
    assert ran.reason is ExitReason.COMPLETED
    stdout = ran.lines("stdout")
    assert stdout[0] == "binary: \ufffd\ufffd\x00\ufffd \ufffd\ufffd\ufffd end"
    assert "\ufffdPNG" in ran.lines("stderr")
    hostile.record("script output", f"binary bytes ({harness.method})", "contained", ran.seconds)


async def test_no_trailing_newline(harness: Harness, hostile: HostileTally) -> None:
    ran = await harness.run("no_newline.py")
    assert ran.reason is ExitReason.COMPLETED
    assert ran.lines("stdout")[-1] == "the last words on stdout"
    assert ran.lines("stderr")[-1] == "the last words on stderr"
    assert ran.exited.stderr_tail[-1] == "the last words on stderr"
    # Nothing was left in its group: no note of killing anything.
    assert not any("killed what" in line for line in ran.lines("rung"))
    hostile.record(
        "script output", f"no final newline ({harness.method})", "contained", ran.seconds
    )


async def test_a_flood_of_output(harness: Harness, hostile: HostileTally) -> None:
    """200 MiB as fast as the pipe takes it: the trial completes, the worker's memory
    stays bounded, what was over the rate is dropped and a marker says how much."""
    ran = await harness.run("flood.py", "200", watch_rss=True)
    assert ran.reason is ExitReason.COMPLETED
    stdout = ran.lines("stdout")
    shipped = sum(cost(line) for line in stdout)
    assert shipped <= TRIAL_LOG_BURST_BYTES + TRIAL_LOG_BYTES_PER_S * ran.seconds
    markers = [line for line in ran.lines("rung") if "of output were dropped" in line]
    assert markers
    dropped = sum(int(m.split("rung: ")[1].split(" lines")[0]) for m in markers)
    assert dropped + len(stdout) >= 200 * 10485  # every line shipped or counted
    assert ran.rss_growth_kib < 64 * 1024  # far below what the flood wrote
    for batch in ran.of(LogLines):
        assert len(batch.lines) <= MAX_LOG_BATCH_LINES
        assert sum(cost(line.text) for line in batch.lines) <= MAX_LOG_BATCH_BYTES
    hostile.record("script output", f"200 MiB flood ({harness.method})", "contained", ran.seconds)


# ---------------------------------------------------------------------- the Core API
async def test_metrics_and_metadata_at_and_over_the_limits(
    harness: Harness, hostile: HostileTally
) -> None:
    ran = await harness.run("huge_metrics.py")
    assert ran.reason is ExitReason.COMPLETED
    [at_limit] = [m for m in ran.of(MetricsReported) if "blob" in m.metrics]
    assert len(json.dumps(at_limit.metrics)) == MAX_METRICS_BYTES
    refused = [line for line in ran.lines("stdout") if line.startswith("refused")]
    assert len(refused) == 2
    assert "(MAX_METRICS_BYTES)" in refused[0]
    assert "(MAX_CHECKPOINT_METADATA_BYTES)" in refused[1]
    assert ran.of(CheckpointSaved) == []
    hostile.record("core api", f"metrics at the limit ({harness.method})", "contained", ran.seconds)
    hostile.record("core api", f"metrics over the limit ({harness.method})", "refused", ran.seconds)
    hostile.record(
        "core api", f"metadata over the limit ({harness.method})", "refused", ran.seconds
    )


async def test_deeply_nested_metrics(harness: Harness, hostile: HostileTally) -> None:
    ran = await harness.run("deep_metrics.py")
    assert ran.reason is ExitReason.COMPLETED
    assert any("deep" in m.metrics for m in ran.of(MetricsReported))
    refused = [line for line in ran.lines("stdout") if line.startswith("refused")]
    assert len(refused) == 3
    assert all("MAX_JSON_DEPTH" in line for line in refused)
    for case in ("one level too deep", "100,000 deep", "metadata 5,000 deep"):
        hostile.record("core api", f"metrics {case} ({harness.method})", "refused", ran.seconds)


async def test_raw_requests_that_bypass_the_core_api(
    harness: Harness, hostile: HostileTally
) -> None:
    """The worker checks every limit again: a script may write to its socket directly."""
    ran = await harness.run("raw_channel.py")
    assert ran.reason is ExitReason.COMPLETED
    replies = dict(line.split(": ", 1) for line in ran.lines("stdout") if ": then " not in line)
    assert f"{CHANNEL_REQUEST_BYTES} bytes (CHANNEL_REQUEST_BYTES)" in replies["overlong"]
    assert "(MAX_METRICS_BYTES)" in replies["huge_metrics"]
    assert "MAX_JSON_DEPTH" in replies["deep_metrics"]
    assert "MAX_JSON_DEPTH" in replies["very_deep"]
    assert "(UUID_PATTERN)" in replies["forged_uuid"]
    assert "JSON object" in replies["not_an_object"]
    assert "bad request" in replies["not_json"]
    # The channel went on after each.
    thens = [line for line in ran.lines("stdout") if ": then " in line]
    assert thens == [f"{name}: then {{'preempt': False}}" for name in replies]
    assert ran.of(CheckpointSaved) == []
    assert not any("blob" in m.metrics or "d" in m.metrics for m in ran.of(MetricsReported))
    for name in replies:
        hostile.record("core api", f"raw {name} ({harness.method})", "refused", ran.seconds)


# ---------------------------------------------------------------------- behaviour
async def test_a_script_that_never_reports_is_killed(
    harness: Harness, hostile: HostileTally
) -> None:
    ran = await harness.run("silent.py", hang_timeout_s=1.0)
    assert ran.reason is ExitReason.ERRORED
    assert "--hang-timeout" in ran.exited.message
    hostile.record(
        "script behaviour", f"never reports ({harness.method})", "contained", ran.seconds
    )


async def test_children_left_behind_die_with_the_group(
    harness: Harness, hostile: HostileTally, tmp_path: Path
) -> None:
    """One child holds the output pipes, one is orphaned: wait() neither hangs on the
    pipes nor leaves them running, and trial_exited goes out once."""
    pids_file = tmp_path / "pids"
    ran = await harness.run("forks.py", str(pids_file))
    assert ran.reason is ExitReason.COMPLETED
    assert ran.exited.reason is ExitReason.COMPLETED  # exactly one (Ran.exited)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    await wait_for(lambda: not any(_alive(p) for p in pids), 10, "the children gone")
    assert any("killed what the training process left" in line for line in ran.lines("rung"))
    hostile.record(
        "script behaviour", f"forks children and exits ({harness.method})", "contained", ran.seconds
    )


async def test_the_trial_finds_no_password_in_its_environment(
    harness: Harness, hostile: HostileTally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's environment is an allowlist: the worker's broker URL is in neither its
    os.environ nor its /proc/self/environ. (Its parent's /proc entry is closed by the
    worker making itself non-dumpable: worker/privileges.py, tested there.)"""
    monkeypatch.setenv("RUNG_BROKER_URL", f"amqp://rung:{SECRET}@broker:5672/")
    monkeypatch.setenv("SOME_OTHER_TOKEN", SECRET)
    ran = await harness.run("environ.py", SECRET)
    assert ran.reason is ExitReason.COMPLETED
    stdout = ran.lines("stdout")
    assert "os.environ: clean" in stdout
    assert "self: clean" in stdout
    hostile.record(
        "script behaviour", f"reads its environ ({harness.method})", "contained", ran.seconds
    )


async def test_only_the_trials_own_processes_may_use_its_channel(
    harness: Harness, hostile: HostileTally
) -> None:
    """The socket sits in a private directory (0700); a process outside the trial's
    process group that connects all the same (here: this test, same uid) is refused, with
    the trial's token (read from its environment, say), with another or with none."""
    run, _ = harness.make("silent.py")
    refusals: list[str] = []

    class Log:  # the run's logger, keeping what its refusals say
        def __init__(self, real: Any) -> None:
            self.real = real

        def warning(self, event: str, **fields: Any) -> None:
            refusals.append(str(fields.get("reason")))
            self.real.warning(event, **fields)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    run.log = Log(run.log)
    assert await run.start()
    waiting = asyncio.create_task(run.wait())
    try:
        assert run.channel_dir is not None
        assert run.socket_path is not None
        assert stat.S_IMODE(run.channel_dir.stat().st_mode) == 0o700
        for first in (
            hello(run.channel_token),
            hello("0" * 32),
            b'{"op": "hello"}\n',
            b"",
            b"\xff" * 300 + b"\n",
        ):
            reply = await asyncio.to_thread(_ask, run.socket_path, first)
            assert reply == b"", first  # closed without an answer
        # The trial's own token reached the run, which refused the peer's process
        # group (the other four never named it).
        assert len(refusals) == 1
        assert "not the trial's" in refusals[0]
    finally:
        run.kill("the test is over")
        await waiting
    assert not run.channel_dir.exists()
    hostile.record("core api", f"foreign peer on the channel ({harness.method})", "refused")


async def test_runs_share_the_workers_socket_and_one_ending_leaves_it_serving(
    harness: Harness, hostile: HostileTally
) -> None:
    """As on a worker, runs given one ChannelServer share its socket: the end of one (a
    kill) leaves it serving the next, whose raw requests and reports go over it."""
    server = ChannelServer()
    try:
        first, _ = harness.make("silent.py", channels=server)
        second, events = harness.make("raw_channel.py", channels=server)
        assert await first.start()
        first.kill("the test is over")
        assert await asyncio.wait_for(first.wait(), timeout=120) is ExitReason.ERRORED
        assert server.path is not None
        assert server.path.exists()  # the run's end is not the socket's
        assert await second.start()
        assert await asyncio.wait_for(second.wait(), timeout=120) is ExitReason.COMPLETED
        assert first.socket_path == second.socket_path == server.path
        assert any(isinstance(event, OpCompleted) for event in events)
    finally:
        server.close()
    assert not server.path.parent.exists()
    hostile.record("core api", f"runs sharing the socket ({harness.method})", "contained")


async def test_a_trial_whose_trial_started_cannot_go_out_does_not_run(
    harness: Harness, hostile: HostileTally
) -> None:
    """Issue 18: the process is forked while trial_started waits for its confirm. If the
    confirm never comes (the broker is gone), the process is killed and reaped and its
    channel removed before start() raises: nothing of the trial runs on here."""
    run, events = harness.make("silent.py")

    async def refuse(body: Body, *, message_id: str | None = None) -> str:
        if isinstance(body, TrialStarted):
            await wait_for(lambda: run.process is not None, 10, "the process forked")
            raise BrokerUnavailableError("the broker connection is down (the test's)")
        events.append(body)
        return message_id or "m"

    run._emit = refuse
    with pytest.raises(BrokerUnavailableError):
        await run.start()
    assert run.process is not None
    assert run.process.returncode is not None  # killed and reaped
    assert run.channel_dir is not None
    assert not run.channel_dir.exists()
    assert events == []  # no event of the trial went out
    hostile.record("core api", f"trial_started refused ({harness.method})", "contained")


async def test_nothing_of_a_trial_goes_out_before_its_trial_started_is_confirmed(
    harness: Harness,
) -> None:
    """Issue 18: the script connects and calls the Core API while trial_started waits
    for its confirm; its calls are answered, and its events sent, only after it."""
    run, events = harness.make("no_newline.py")
    emit = run._emit

    async def slow_start(body: Body, *, message_id: str | None = None) -> str:
        if isinstance(body, TrialStarted):
            # The confirm comes only once the script is connected and waiting on it.
            await wait_for(lambda: bool(run._connections), 30, "the script's first call")
        return await emit(body, message_id=message_id)

    run._emit = slow_start
    assert await run.start()
    assert await asyncio.wait_for(run.wait(), timeout=120) is ExitReason.COMPLETED
    assert isinstance(events[0], TrialStarted)
    assert any(isinstance(e, MetricsReported) for e in events[1:])


async def test_a_spawn_that_raises_is_the_trials_failure_not_the_workers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error nothing checked (exec's ValueError for a NUL byte, say) ends the trial
    as ERRORED, after its trial_started, instead of escaping start() half done."""
    run, events = harness.make("silent.py")

    async def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("embedded null byte")

    monkeypatch.setattr(run._spawner, "spawn", broken)
    assert not await run.start()
    assert [type(e) for e in events if not isinstance(e, LogLines)] == [TrialStarted, TrialExited]
    exited = events[-1]
    assert isinstance(exited, TrialExited)
    assert exited.reason is ExitReason.ERRORED
    assert "embedded null byte" in exited.message


def _ask(path: Path, first: bytes) -> bytes:
    """The channel's answer to ``first`` and a request; b"" where it closed the
    connection, before or after the request was sent (a refusal can come before it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        try:
            sock.sendall(first + b'{"op": "should_preempt"}\n')
            return sock.recv(1024)
        except (BrokenPipeError, ConnectionResetError):
            return b""


# ---------------------------------------------------------------------- end to end
def _config(name: str, entrypoint: str, metric: str = "loss", length: int = 5) -> dict[str, Any]:
    return {
        "name": name,
        "entrypoint": entrypoint,
        "hyperparameters": {"increment_by": 1, "batch_sleep": 0.01},
        "searcher": {"name": "single", "metric": metric, "max_length": length},
        "max_restarts": 0,
    }


@pytest.mark.rabbitmq
async def test_hostile_experiments_complete_beside_a_well_behaved_one(
    tmp_path: Path, hostile: HostileTally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tqdm bar and a 200 MiB flood, each an experiment of its own, on workers of a real
    searcher over RabbitMQ: both complete, and so does a normal experiment beside them.
    The lines are seen as the workers send them (and the broker confirms them)."""
    shipped: dict[str, list[str]] = defaultdict(list)
    original = TrialRun.__init__

    def spying(self: TrialRun, cmd: RunTrial, **kwargs: Any) -> None:
        emit = kwargs["emit"]

        async def spy(body: Body, *, message_id: str | None = None) -> str:
            sent: str = await emit(body, message_id=message_id)
            if isinstance(body, LogLines):
                shipped[body.experiment_id] += [line.text for line in body.lines]
            return sent

        original(self, cmd, **{**kwargs, "emit": spy})

    monkeypatch.setattr(TrialRun, "__init__", spying)
    started = time.monotonic()
    async with rung.Client.local(tmp_path / "state", workers=3, broker_url=AMQP_URL) as client:
        bar = await client.create_experiment(
            _config("hostile-tqdm", "python3 tqdm_bar.py 30000"), SCRIPTS
        )
        flood = await client.create_experiment(
            _config("hostile-flood", "python3 flood.py 200"), SCRIPTS
        )
        normal = await client.create_experiment(
            _config("well-behaved", "python3 3_hpsearch.py", metric="x", length=20), EXAMPLES
        )
        for experiment in (bar, flood, normal):
            assert await experiment.wait(timeout=240) == "COMPLETED", experiment.id
        [trial] = await normal.trials()
        assert (trial.state, trial.length) == ("COMPLETED", 20)
    seconds = time.monotonic() - started
    bar_lines, flood_lines = shipped[bar.id], shipped[flood.id]
    assert sum(line.startswith("training:") for line in bar_lines) > 1000
    assert "tqdm done" in bar_lines
    assert any("of output were dropped" in line for line in flood_lines)
    assert "flood done" in flood_lines
    assert len(flood_lines) < 200 * 10485 // 10  # most of it was dropped, not shipped
    hostile.record("script output", "tqdm bar, end to end", "contained", seconds)
    hostile.record("script output", "200 MiB flood, end to end", "contained", seconds)
