"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

Pages served from a state directory (the golden logs and a simulated ASHA search) must
open without console errors and draw a mark per result; a live experiment, run by
``rung.Client.local`` on the in-memory broker and on RabbitMQ, must show a new result
within a second, and a click on kill must cancel the trial. Screenshots go to
``$RUNG_SCREENSHOT_DIR`` (``docs/img`` for docs/dashboard.md), else to a scratch folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

import rung
from bench.dashboard_log import records as synthetic_records
from rung.broker.schemas import OpCompleted
from rung.dashboard import ClientSource, Dashboard, DirSource
from rung.searcher.eventlog import InputRecord, read_log
from tests.support import AMQP_URL, delete_namespace, unique_prefix, wait_for_async

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (scripts/chromium.sh installs it)",
    ),
]

# A trial that waits for the test's word before each result: gate files in GATES.
GATED = """
import os, pathlib, time
import rung as det

info = det.get_cluster_info()
gates = pathlib.Path(info.trial.hparams["gates"])
trial_id = info.trial.trial_id
with det.core.init() as core:
    for op in core.searcher.operations():
        for step in range(1, op.length + 1):
            gate = gates / f"go-{trial_id}-{step}"
            while not gate.exists():
                time.sleep(0.02)
            core.train.report_validation_metrics(step, {"loss": 1.0 / (trial_id + step)})
        op.report_completed(1.0 / (trial_id + op.length))
"""


def config(gates: Path) -> dict[str, Any]:
    return {
        "name": "gated",
        "entrypoint": "python3 gated.py",
        "hyperparameters": {
            "gates": {"type": "const", "val": str(gates)},
            "x": {"type": "int", "minval": 1, "maxval": 9},
        },
        "searcher": {
            "name": "random",
            "metric": "loss",
            "max_length": 2,
            "max_trials": 2,
            "max_concurrent_trials": 2,
        },
        "max_restarts": 0,
    }


def screenshots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("RUNG_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield instance
        finally:
            await instance.close()


class Console:
    """A page's console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


async def open_page(browser: Browser, url: str) -> tuple[Page, Console]:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    console = Console(page)
    await page.goto(url)
    await page.wait_for_load_state("networkidle")
    return page, console


def state_dir(root: Path) -> Path:
    """A searcher state directory holding the golden logs and a simulated ASHA search."""
    experiments = root / "experiments"
    for log in sorted(GOLDEN.glob("*.v1.jsonl")):
        experiment_id = json.loads(log.read_text().splitlines()[0])["experiment_id"]
        (experiments / experiment_id).mkdir(parents=True)
        shutil.copy(log, experiments / experiment_id / "events.jsonl")
    records = list(synthetic_records(300, workers=6))
    synthetic = experiments / records[0].experiment_id  # type: ignore[union-attr]
    synthetic.mkdir(parents=True)
    with (synthetic / "events.jsonl").open("w") as handle:
        handle.writelines(record.model_dump_json() + "\n" for record in records)
    shutil.copytree(GOLDEN / "contexts", root / "contexts")
    return root


def results_in(log: Path) -> int:
    return sum(
        1
        for record in read_log(log)
        if isinstance(record, InputRecord)
        and record.ignored is None
        and isinstance(record.input, OpCompleted)
    )


async def test_every_page_opens_without_errors_and_draws_every_result(
    browser: Browser, tmp_path: Path
) -> None:
    root = state_dir(tmp_path / "state")
    shots = screenshots(tmp_path / "shots")
    source = DirSource(root)
    async with Dashboard(source, port=0, context_root=root / "contexts") as dashboard:
        assert dashboard.address is not None
        base = dashboard.address.url.rstrip("/")
        page, console = await open_page(browser, base + "/")
        rows = await page.locator("tr.experiment").count()
        assert rows == len(list((root / "experiments").iterdir()))
        await page.screenshot(path=str(shots / "dashboard-experiments.png"), full_page=True)
        assert console.errors == []
        await page.close()

        for log in sorted((root / "experiments").glob("*/events.jsonl")):
            experiment_id = log.parent.name
            page, console = await open_page(browser, f"{base}/experiments/{experiment_id}")
            results = results_in(log)
            curves = await page.locator("#curves circle.mark").count()
            assert curves == results, experiment_id
            if await page.locator("#rungs").count():
                assert await page.locator("#rungs circle.mark").count() == results
            # No controls on a state directory: it is read-only.
            assert await page.locator("button.control").count() == 0
            assert console.errors == [], experiment_id
            if experiment_id.startswith("exp-synthetic"):
                await page.screenshot(path=str(shots / "dashboard-experiment.png"))
                for section in ("curves", "timeline"):
                    await page.locator(f"#{section}").screenshot(
                        path=str(shots / f"dashboard-{section}.png")
                    )
                # Hundreds of crossing lines: a JPEG is a tenth of the PNG.
                await page.locator("#parallel").screenshot(
                    path=str(shots / "dashboard-parallel.jpg"), type="jpeg", quality=80
                )
                # A click on a rung's result shows the searcher's reasons for it.
                marks = page.locator("#rungs circle.mark.stopped")
                await marks.first.click()
                await page.wait_for_selector("#why:not([hidden]) li")
                why = await page.locator("#why").text_content()
                assert why is not None
                assert "rank" in why
                # The searcher's reason is on each rung mark, for hover.
                title = await page.locator("#rungs circle.mark title").first.text_content()
                assert title is not None
                assert "rank" in title
                # Filters: top 5 curves; hidden axis.
                await page.goto(f"{base}/experiments/{experiment_id}?top=5")
                assert await page.locator("#curves g.curve").count() == 5
                await page.locator("#rungs").screenshot(path=str(shots / "dashboard-rungs.png"))
                await page.locator(".summary a").first.click()  # the best trial
                await page.wait_for_load_state("networkidle")
                assert "/trials/" in page.url
                await page.screenshot(path=str(shots / "dashboard-trial.png"))
                assert console.errors == []
            await page.close()


async def run_live(browser: Browser, tmp_path: Path, client: rung.Client) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    context = tmp_path / "context"
    context.mkdir()
    (context / "gated.py").write_text(GATED)
    async with client:
        experiment = await client.create_experiment(config(gates), context)

        async def running() -> bool:
            trials = await experiment.trials()
            return len(trials) == 2 and all(t.state == "RUNNING" for t in trials)

        await wait_for_async(running, timeout=60, what="both trials running")
        async with Dashboard(ClientSource(client, poll_s=0.5), port=0) as dashboard:
            assert dashboard.address is not None
            base = dashboard.address.url.rstrip("/")
            page, console = await open_page(browser, f"{base}/experiments/{experiment.id}")
            assert await page.locator("#curves circle.mark").count() == 0
            assert await page.locator("button.control").count() == 4
            # The time the page first shows a given number of marks, by the page's clock.
            await page.evaluate(
                """() => {
                  window.seen = {};
                  const look = () => {
                    const n = document.querySelectorAll('#curves circle.mark').length;
                    if (!(n in window.seen)) {
                      window.seen[n] = (performance.timeOrigin + performance.now()) / 1000;
                    }
                  };
                  new MutationObserver(look).observe(document.body,
                    {subtree: true, childList: true});
                }"""
            )
            (gates / "go-1-1").touch()
            (gates / "go-1-2").touch()

            async def result_logged() -> float | None:
                for record in await experiment.history():
                    if isinstance(record, InputRecord) and isinstance(record.input, OpCompleted):
                        return record.at
                return None

            await wait_for_async(
                lambda: _is_not_none(result_logged()), timeout=60, what="trial 1's result"
            )
            logged = await result_logged()
            assert logged is not None
            await page.wait_for_function("() => '1' in window.seen", timeout=10_000)
            shown = await page.evaluate("() => window.seen['1']")
            latency = shown - logged
            print(f"a new result reached the open page {latency * 1000:.0f} ms after the log")  # noqa: T201
            assert latency < 1.0

            await check_read_only(browser, client, experiment.id)
            assert (await experiment.trial(2).describe()).state == "RUNNING"

            # Kill trial 2 from its page.
            trial_page, trial_console = await open_page(
                browser, f"{base}/experiments/{experiment.id}/trials/2"
            )
            trial_page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await trial_page.locator("button.kill-trial").click()
            await trial_page.wait_for_selector("#control-result.ok", timeout=30_000)

            async def canceled() -> bool:
                return (await experiment.trial(2).describe()).state == "CANCELED"

            await wait_for_async(canceled, timeout=60, what="trial 2 canceled")
            # The trial's page follows the stream: it says CANCELED without a reload.
            await trial_page.wait_for_function(
                "() => document.querySelector('#trial-state').textContent === 'CANCELED'",
                timeout=10_000,
            )
            listing, listing_console = await open_page(browser, f"{base}/")
            assert await experiment.wait(timeout=60) == "COMPLETED"
            await page.wait_for_function(
                "() => document.querySelector('#state').textContent === 'COMPLETED'",
                timeout=10_000,
            )
            # The list fetches its rows again every two seconds.
            await listing.wait_for_function(
                "(id) => document.querySelector(`tr[data-experiment='${id}']`)"
                ".dataset.state === 'COMPLETED'",
                arg=experiment.id,
                timeout=10_000,
            )
            assert console.errors == []
            assert trial_console.errors == []
            assert listing_console.errors == []
            for opened in (page, trial_page, listing):
                await opened.close()


async def check_read_only(browser: Browser, client: rung.Client, experiment_id: str) -> None:
    """A read-only dashboard on the same searcher shows no controls, and refuses them."""
    async with Dashboard(ClientSource(client), port=0, read_only=True) as viewer:
        assert viewer.address is not None
        other, _ = await open_page(
            browser, f"{viewer.address.url}experiments/{experiment_id}/trials/2"
        )
        assert await other.locator("button.control").count() == 0
        refused = await other.evaluate(
            """async (url) => (await fetch(url, {method: 'POST',
                headers: {'X-Rung-Token': document.querySelector(
                  'meta[name=rung-token]').content}})).status""",
            f"{viewer.address.url}experiments/{experiment_id}/trials/2/kill",
        )
        assert refused == 403
        await other.close()


async def _is_not_none(value: Any) -> bool:
    return (await value) is not None


async def test_a_live_experiment_in_memory(browser: Browser, tmp_path: Path) -> None:
    await run_live(browser, tmp_path, rung.Client.local(tmp_path / "state", workers=2))


@pytest.mark.rabbitmq
async def test_a_live_experiment_on_rabbitmq(browser: Browser, tmp_path: Path) -> None:
    namespace = unique_prefix()
    try:
        client = rung.Client.local(
            tmp_path / "state", workers=2, broker_url=AMQP_URL, namespace=namespace
        )
        await run_live(browser, tmp_path, client)
    finally:
        await delete_namespace(namespace)


def test_the_clock_is_the_same_for_page_and_test() -> None:
    """The latency check compares the page's clock with the log's: one machine's."""
    assert abs(time.time() - time.time()) < 1
