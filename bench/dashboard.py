"""The dashboard at scale: a 10,000-trial ASHA search (1,000 with ``--quick``).

A synthetic log (:mod:`bench.dashboard_log`) is served from a state directory, as
``rung dashboard --state-dir`` does. Figures, each the median of 5 requests after the
view is loaded (min..max beside it):

* ``load``: fold the log into the dashboard's view (what the first visit waits for);
* ``page``, ``sections``, ``list``, ``trial``: server time of the experiment page, of
  its live sections (what each update fetches), of the experiments list and of a trial
  page, each rendered afresh (as at every new record), measured as the time to the
  response's headers (the server renders the whole body first), with the body's size;
  ``page_cached``: a second viewer of the same record;
* ``loop_stall_while_rendering``: the longest the event loop went unserved while the
  sections were rendered afresh (they are rendered in a thread);
* ``browser_*`` (where Debian's chromium is installed): Chromium's navigation timing of
  the experiment page (DOM ready, load) and of one live refresh (fetch the sections and
  swap them in, to the next frame), median of 3.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.dashboard_log import make_log
from rung.dashboard import Dashboard, DirSource

CHROMIUM = Path("/usr/bin/chromium")
_HAVE_CHROMIUM = CHROMIUM.exists()


async def _stalls(session: aiohttp.ClientSession, url: str, dashboard: Dashboard) -> list[float]:
    """The longest the event loop went unserved while sections were rendered afresh, 5
    times: a task asks to wake every millisecond and notes how late it woke."""
    worst: list[float] = []
    for _ in range(5):
        dashboard.clear_cache()
        stop = asyncio.Event()
        ticker = asyncio.create_task(_tick(stop))
        await _timed(session, url)
        stop.set()
        worst.append(await ticker)
    return worst


async def _tick(stop: asyncio.Event) -> float:
    """Wake every millisecond until ``stop``; how late the latest wake was."""
    late = 0.0
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late = max(late, time.perf_counter() - start - 0.001)
    return late


def _row(phase: str, seconds: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "workload": "dashboard",
        "phase": phase,
        "seconds_median": round(statistics.median(seconds), 4),
        "seconds_min": round(min(seconds), 4),
        "seconds_max": round(max(seconds), 4),
        **extra,
    }


async def _timed(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    async with session.get(url) as response:
        headers = time.perf_counter() - start
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
    return headers, len(body)


async def _browser(url: str) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright  # noqa: PLC0415 (optional)

    out: dict[str, list[float]] = {"dom_ready": [], "load": [], "refresh": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            for _ in range(3):
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(url, wait_until="load", timeout=120_000)
                timing = await page.evaluate(
                    "() => { const t = performance.getEntriesByType('navigation')[0];"
                    " return [t.domContentLoadedEventEnd, t.loadEventEnd]; }"
                )
                out["dom_ready"].append(timing[0] / 1000)
                out["load"].append(timing[1] / 1000)
                refresh = await page.evaluate(
                    """async () => {
                      const root = document.getElementById('experiment');
                      const start = performance.now();
                      const response = await fetch('/experiments/' + root.dataset.experiment
                                                   + '/sections');
                      const body = await response.json();
                      for (const [name, html] of Object.entries(body.sections)) {
                        const target = root.querySelector('[data-section="' + name + '"]');
                        if (target) { target.innerHTML = html; }
                      }
                      await new Promise((done) => requestAnimationFrame(() => done()));
                      return (performance.now() - start) / 1000;
                    }"""
                )
                out["refresh"].append(refresh)
                await page.close()
        finally:
            await browser.close()
    return out


async def _measure(root: Path, experiment_id: str, records: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with Dashboard(DirSource(root), port=0) as dashboard:
        assert dashboard.address is not None  # noqa: S101 (started)
        base = dashboard.address.url.rstrip("/")
        start = time.perf_counter()
        followed = await dashboard.hub.follow(experiment_id)
        loaded = time.perf_counter() - start
        view = followed.view
        trials = len(view.trials) if view is not None else 0
        rows.append(_row("load", [loaded], records=records, trials=trials))
        pages: dict[str, tuple[str, bool]] = {
            "page": (f"/experiments/{experiment_id}", True),
            "page_cached": (f"/experiments/{experiment_id}", False),
            "sections": (f"/experiments/{experiment_id}/sections", True),
            "page_all_curves": (f"/experiments/{experiment_id}?top=1000000", True),
            "list": ("/", True),
            "trial": (f"/experiments/{experiment_id}/trials/1", True),
        }
        async with aiohttp.ClientSession() as session:
            stalls = await _stalls(session, base + pages["sections"][0], dashboard)
            rows.append(_row("loop_stall_while_rendering", stalls, trials=trials))
            for phase, (path, cold) in pages.items():
                timings: list[tuple[float, int]] = []
                for _ in range(5):
                    if cold:
                        dashboard.clear_cache()
                    timings.append(await _timed(session, base + path))
                rows.append(
                    _row(
                        phase,
                        [t for t, _ in timings],
                        trials=trials,
                        bytes=timings[-1][1],
                    )
                )
        if _HAVE_CHROMIUM:
            measured = await _browser(f"{base}/experiments/{experiment_id}")
            rows += [
                _row(f"browser_{name}", seconds, trials=trials)
                for name, seconds in measured.items()
            ]
    return rows


def run(*, quick: bool) -> list[dict[str, object]]:
    trials = 1_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment_id = f"exp-synthetic{trials}"
        records = make_log(root / "experiments" / experiment_id / "events.jsonl", trials)
        rows: list[dict[str, object]] = asyncio.run(_measure(root, experiment_id, records))
        return rows


if __name__ == "__main__":  # pragma: no cover (a tool)
    import json
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
