"""The dashboard's web server: pages, live updates and controls, on aiohttp.

It runs in the caller's event loop, beside its ``rung.Client`` (``Dashboard.start``),
and binds to 127.0.0.1 unless told otherwise. Pages are rendered on the server (Jinja2
templates, SVG charts); a page stays live through one server-sent event stream per
experiment (``/experiments/<id>/stream``): each event carries the timeline entries after
the last one the page has, numbered by the log's record numbers, so a reconnect (the
browser sends ``Last-Event-ID``) resumes with no gap and no repeat; the page then fetches
its sections again (``/experiments/<id>/sections``).

Safety, since the pages are for anyone who can reach the port and the controls act on
experiments:

* every request must name this server in ``Host`` (a DNS-rebinding page elsewhere
  cannot read it);
* controls are POSTs that carry this process's token (a header a page of another
  origin cannot set without CORS, which this server never grants) and, where the
  browser sends one, an ``Origin`` of this server; read-only dashboards (``--read-only``,
  or a state directory) answer them 403 and show no controls;
* responses forbid framing, sniffing and any script or style from elsewhere (CSP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, cast

import jinja2
import structlog
from aiohttp import web

from rung.dashboard.errors import DashboardError
from rung.dashboard.hub import Followed, Hub
from rung.dashboard.model import ExperimentView
from rung.dashboard.pages import (
    TRIALS_PAGE,
    Options,
    curve_names,
    experiment_sections,
    experiment_summary,
    lineage_note,
    parallel_note,
    trial_page,
    trial_rows,
    why,
)
from rung.dashboard.source import ExperimentRef, LogPage, Source, valid_id
from rung.launch.wrap_rank import as_rank
from rung.searcher.client import ClientError, NotFoundError, RefusedError

__all__ = ["Dashboard"]

log = structlog.get_logger("rung.dashboard")

_ACTIONS: Final = ("pause", "activate", "cancel", "kill")
_WILDCARD: Final = ("0.0.0.0", "::", "")  # noqa: S104 (names of a wildcard bind)
_KEY_COOKIE: Final = "rung_dashboard_key"
_HAS_PORT: Final = re.compile(r":[0-9]+$")
_NUMBER: Final = re.compile(r"[0-9]{1,9}")  # a trial, bracket or rung number
_SEQ: Final = re.compile(r"[0-9]{1,19}")  # a record number or a log cursor
_PAST_THE_END: Final = 2**62
_TAIL_BYTES: Final = 256 * 1024  # the first window of the store a trial page opens on
_TAIL_MAX_BYTES: Final = 64 * 1024 * 1024  # the largest (then it opens on what it has)
_TAIL_LINES: Final = 1000  # the lines a trial page opens with, at most
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# A stream sends a comment this often when nothing happens (proxies close idle ones).
_KEEPALIVE_S: Final = 15.0
# Renderings of sections kept (the newest record's, for a few option sets).
_CACHED: Final = 8
# The list page waits this long for experiments' histories, then shows what it has.
_LIST_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


class Dashboard:
    """``async with Dashboard(source) as dashboard:`` serves until the block ends."""

    def __init__(
        self,
        source: Source,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        read_only: bool = False,
        context_root: Path | None = None,
        allow_custom: bool = False,
        allowed_hosts: Iterable[str] = (),
        key: str | None = None,
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.read_only = read_only or not source.writable
        self.hub = Hub(source, context_root=context_root, allow_custom=allow_custom)
        self.token = secrets.token_urlsafe(24)
        # Names (besides loopback) browsers may reach it by; required on a wildcard bind.
        self.allowed_hosts = frozenset(allowed_hosts)
        # The access key: where set, every request must carry it (``?key=``, then the
        # cookie set from it), as other users of the machine can reach 127.0.0.1 too.
        self.key = key
        self._render_slot = asyncio.Semaphore(1)
        self._rendering: dict[
            tuple[str, int, Options], asyncio.Task[tuple[int, dict[str, str]]]
        ] = {}
        self.address: Address | None = None
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._cache: dict[tuple[str, int, Options], dict[str, str]] = {}
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("rung.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # ------------------------------------------------------------------ lifetime
    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> Address:
        if self.host in _WILDCARD and not self.allowed_hosts:
            raise DashboardError(
                f"--host {self.host} listens on every address: name the hosts browsers reach "
                "this machine by with --allow-host NAME (repeatable), so that a web page "
                "that points its own name at this machine cannot read the dashboard"
            )
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._experiments)
        app.router.add_get("/api/experiments", self._api_experiments)
        app.router.add_get("/fragments/experiments", self._experiment_rows)
        app.router.add_get("/api/experiments/{eid}", self._api_experiment)
        app.router.add_get("/experiments/{eid}", self._experiment)
        app.router.add_get("/experiments/{eid}/sections", self._sections)
        app.router.add_get("/experiments/{eid}/stream", self._stream)
        app.router.add_get("/experiments/{eid}/why", self._why)
        app.router.add_get("/experiments/{eid}/trials/{tid}", self._trial)
        app.router.add_get("/experiments/{eid}/trials/{tid}/logs", self._logs)
        app.router.add_post("/experiments/{eid}/control/{action}", self._control)
        app.router.add_post("/experiments/{eid}/trials/{tid}/kill", self._kill_trial)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/favicon.ico", self._no_icon)
        app.on_response_prepare.append(_prepared)
        # handler_cancellation: a stream whose page went away is cancelled at once.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise DashboardError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another --port (0 picks a free one) or --host"
            ) from exc
        server = site._server  # noqa: SLF001 (aiohttp keeps the bound socket here)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.address = Address(self.host, int(port))
        log.info("dashboard serving", url=self.address.url, read_only=self.read_only)
        return self.address

    async def stop(self) -> None:
        for task in list(self._streams):
            task.cancel()
        renders = list(self._rendering.values())
        for render in renders:
            render.cancel()
        for render in renders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await render
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ guard
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.host not in self._hosts():
            return web.Response(
                status=421,
                text=f"this dashboard answers only to {sorted(self._hosts())}; open it by "
                "one of those names (rung dashboard --allow-host NAME adds one)",
            )
        keyed = self._keyed(request)
        if keyed is None:
            return web.Response(
                status=403,
                text="this dashboard needs its access key: open the address `rung dashboard` "
                "printed (it ends in ?key=...)",
            )
        try:
            response = await handler(request)
        except NotFoundError as exc:
            response = self._error_page(404, str(exc))
        except DashboardError as exc:
            response = self._error_page(503, str(exc))
        except ClientError as exc:
            response = self._error_page(502, f"the searcher did not answer: {exc}")
        if keyed and self.key is not None and not response.prepared:
            response.set_cookie(self._cookie, self.key, httponly=True, samesite="Strict", path="/")
        return response

    def _keyed(self, request: web.Request) -> bool | None:
        """None: the request lacks the key; True: it came in the query (set the cookie);
        False: no key is needed, or the cookie has it."""
        if self.key is None:
            return False
        key = self.key.encode()
        # Header bytes that are no UTF-8 arrive as surrogates: compared as they came.
        query = request.query.get("key", "").encode("utf-8", "surrogateescape")
        if secrets.compare_digest(query, key):
            return True
        cookie = request.cookies.get(self._cookie, "").encode("utf-8", "surrogateescape")
        if secrets.compare_digest(cookie, key):
            return False
        return None

    @property
    def _cookie(self) -> str:
        """The key's cookie, named with the port: a browser keeps one cookie jar for
        every port of a host, and two dashboards must not overwrite each other's key."""
        port = self.address.port if self.address else self.port
        return f"{_KEY_COOKIE}_{port}"

    def _hosts(self) -> set[str]:
        """The ``Host`` values this dashboard answers to: its address and loopback names
        with its port; each name ``allowed_hosts`` adds with its port and without one (a
        proxy in front on port 80 or 443), or with the port it names (``name:8443``)."""
        port = self.address.port if self.address else self.port
        names = {"localhost", "127.0.0.1", "[::1]"}
        if self.host not in _WILDCARD:
            names.add(f"[{self.host}]" if ":" in self.host else self.host)
        hosts = {f"{name}:{port}" for name in names}
        for name in self.allowed_hosts:
            hosts |= {name} if _HAS_PORT.search(name) else {name, f"{name}:{port}"}
        return hosts

    def _origin_ok(self, origin: str) -> bool:
        """An ``Origin`` of this dashboard: http with a name it answers to, or https
        with a name ``allowed_hosts`` gave (a TLS proxy in front of it)."""
        scheme, _, host = origin.partition("://")
        if scheme == "http":
            return host.removesuffix(":80") in self._hosts() or host in self._hosts()
        if scheme == "https":
            proxied = {h for h in self._hosts() if h.split(":")[0] in self._allowed_names}
            return host.removesuffix(":443") in proxied or host in proxied
        return False

    @property
    def _allowed_names(self) -> set[str]:
        return {name.split(":")[0] for name in self.allowed_hosts}

    def _check_post(self, request: web.Request) -> None:
        if self.read_only:
            raise web.HTTPForbidden(
                text="this dashboard is read-only (--read-only, or a state directory); "
                "controls need a dashboard on a searcher"
            )
        if not secrets.compare_digest(request.headers.get("X-Rung-Token", ""), self.token):
            raise web.HTTPForbidden(
                text="missing or wrong X-Rung-Token: controls are sent by the dashboard's "
                "own pages; reload the page"
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin):
            raise web.HTTPForbidden(text=f"Origin {origin[:100]!r} is not this dashboard")

    # ------------------------------------------------------------------ helpers
    def _render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        page = self._templates.get_template(template).render(
            token=self.token,
            read_only=self.read_only,
            source=self.source.describe,
            **context,
        )
        return web.Response(status=status, text=page, content_type="text/html")

    def _error_page(self, status: int, message: str) -> web.Response:
        return self._render("error.html", status=status, message=message)

    def _eid(self, request: web.Request) -> str:
        experiment_id = request.match_info["eid"]
        if not valid_id(experiment_id):
            raise web.HTTPNotFound(text=f"{experiment_id[:100]!r} is not an experiment id")
        return experiment_id

    def _tid(self, request: web.Request) -> int:
        text = request.match_info["tid"]
        if not _NUMBER.fullmatch(text):
            raise web.HTTPNotFound(text=f"{text[:20]!r} is not a trial id")
        return int(text)

    async def _view(self, request: web.Request) -> tuple[Followed, ExperimentView]:
        followed = await self.hub.follow(self._eid(request))
        if followed.view is None:  # pragma: no cover (follow raises first)
            raise DashboardError(followed.error or "no view")
        return followed, followed.view

    def _may_control(self, view: ExperimentView) -> bool:
        return not self.read_only and not view.ended()

    # ------------------------------------------------------------------ pages
    async def _summaries(self) -> list[dict[str, Any]]:
        """A row per experiment: the full summary of those followed, what the listing
        says of the others. The newest that are not followed yet start loading, as many
        as the hub has room for (it never follows more than its limit), and the list
        waits a moment for them."""
        refs = await self.source.experiments()
        waiting = [r.experiment_id for r in refs if self.hub.peek(r.experiment_id) is None]
        starting = [
            self.hub.start(eid, background=True) for eid in waiting[::-1][: self.hub.room()]
        ]
        if starting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LIST_WAIT_S):
                    await asyncio.gather(*(f.loaded.wait() for f in starting))
        rows: list[dict[str, Any]] = []
        for ref in refs:
            view = self.hub.peek(ref.experiment_id)
            if view is not None:
                rows.append(experiment_summary(view))
            else:
                rows.append(_listed(ref, self.hub.error(ref.experiment_id)))
        return rows

    async def _listing(
        self, request: web.Request
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, str]:
        """Every experiment's summary, those the filters keep, and the filters."""
        summaries = await self._summaries()
        state = request.query.get("state", "")[:64]
        label = request.query.get("label", "")[:256]
        shown = [
            s
            for s in summaries
            if (not state or s["state"] == state) and (not label or label in s["labels"])
        ]
        return summaries, shown, state, label

    async def _experiment_rows(self, request: web.Request) -> web.Response:
        _, shown, _, _ = await self._listing(request)
        html = self._templates.get_template("experiment_rows.html").render(
            experiments=shown, total=len(shown)
        )
        return web.Response(text=html, content_type="text/html")

    async def _experiments(self, request: web.Request) -> web.Response:
        summaries, shown, state, label = await self._listing(request)
        states = sorted({s["state"] for s in summaries})
        labels = sorted({label for s in summaries for label in s["labels"]})
        return self._render(
            "experiments.html",
            experiments=shown,
            total=len(summaries),
            states=states,
            labels=labels,
            state=state,
            label=label,
        )

    async def _api_experiments(self, request: web.Request) -> web.Response:
        summaries = await self._summaries()
        for summary in summaries:
            summary.pop("sparkline", None)
        return web.json_response({"experiments": summaries})

    async def _api_experiment(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        summary = experiment_summary(view)
        summary.pop("sparkline", None)
        summary["trials"] = [
            {
                "trial_id": t.trial_id,
                "state": t.state,
                "hparams": t.hparams,
                "results": [[r.length, r.value] for r in t.results],
                # Population-based training: the trial it continues from, or None.
                "parent": None
                if t.parent is None
                else {
                    "trial_id": t.parent.source_trial,
                    "checkpoint": t.parent.checkpoint,
                    "length": t.parent.length,
                },
            }
            for t in view.trials.values()
        ]
        return web.json_response(summary)

    async def _experiment(self, request: web.Request) -> web.Response:
        followed, view = await self._view(request)
        options = Options.parse(request.query)
        seq, sections = await self._rendered(followed, options)
        rows, matching = trial_rows(view, options)
        return self._render(
            "experiment.html",
            e=experiment_summary(view),
            seq=seq,
            sections=sections,
            activity=list(view.activity)[-200:],
            rows=rows,
            matching=matching,
            page_size=TRIALS_PAGE,
            options=options,
            curve_names=curve_names(view),
            axes=_axis_names(view),
            may_control=self._may_control(view),
            query=request.query_string,
            parallel_note=parallel_note(view, options),
            lineage_note=lineage_note(view),
        )

    def clear_cache(self) -> None:
        """Forget the sections rendered so far (benchmarks time a first rendering)."""
        self._cache.clear()

    async def _rendered(self, followed: Followed, options: Options) -> tuple[int, dict[str, str]]:
        """The sections for these options at the view's newest record.

        Rendered in a thread, one at a time, while the view is held still (its lock):
        the event loop goes on serving other pages, streams and experiments (and, under
        ``rung run --dashboard``, the searcher and workers). The rendering is a task of
        its own, which pages asking for the same record and options await together: a
        page that goes away (its request cancelled) leaves it running, holding the view
        still until its thread returns. The last few renderings are kept."""
        options = options.charts()
        async with followed.lock:
            view = followed.view
            if view is None:  # pragma: no cover (a followed experiment has a view)
                raise DashboardError(f"experiment {followed.experiment_id} has no view")
            key = (view.experiment_id, view.seq, options)
        cached = self._cache.get(key)
        if cached is not None:
            return key[1], dict(cached)
        task = self._rendering.get(key)
        if task is None:
            task = asyncio.create_task(self._render_sections(followed, view, options))
            self._rendering[key] = task
            task.add_done_callback(lambda done: self._rendered_done(key, done))
        seq, sections = await asyncio.shield(task)
        return seq, dict(sections)

    async def _render_sections(
        self, followed: Followed, view: ExperimentView, options: Options
    ) -> tuple[int, dict[str, str]]:
        async with self._render_slot, followed.lock:
            seq = view.seq  # what it renders: the records folded until it got the lock
            sections = await asyncio.to_thread(experiment_sections, view, options)
        if len(self._cache) >= _CACHED:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(view.experiment_id, seq, options)] = sections
        return seq, sections

    def _rendered_done(
        self, key: tuple[str, int, Options], task: asyncio.Task[tuple[int, dict[str, str]]]
    ) -> None:
        self._rendering.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("dashboard: rendering failed", error=repr(task.exception()))

    async def _why(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        query = request.query
        numbers = [query.get(name, "") for name in ("trial", "bracket", "rung")]
        if not all(_NUMBER.fullmatch(n) for n in numbers):
            raise web.HTTPBadRequest(text="why needs ?trial=N&bracket=B&rung=R (numbers)")
        story = why(view, int(numbers[0]), int(numbers[1]), int(numbers[2]))
        if not story:
            raise web.HTTPNotFound(text="no such result at that rung")
        return web.json_response(story)

    async def _sections(self, request: web.Request) -> web.Response:
        followed, view = await self._view(request)
        options = Options.parse(request.query)
        seq, sections = await self._rendered(followed, options)
        rows, matching = trial_rows(view, options)
        sections["trials"] = self._templates.get_template("trials.html").render(
            rows=rows,
            matching=matching,
            page_size=TRIALS_PAGE,
            options=options,
            e=experiment_summary(view),
        )
        sections["head"] = self._templates.get_template("head.html").render(
            e=experiment_summary(view),
            may_control=self._may_control(view),
            read_only=self.read_only,
        )
        return web.json_response({"seq": seq, "sections": sections})

    async def _trial(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        trial_id = self._tid(request)
        trial = view.trials.get(trial_id)
        if trial is None:
            raise NotFoundError(f"experiment {view.experiment_id} has no trial {trial_id}")
        return self._render(
            "trial.html",
            e=experiment_summary(view),
            page=trial_page(view, trial),
            may_control=self._may_control(view) and trial.state not in _FINAL,
        )

    async def _logs(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        trial_id = self._tid(request)
        if trial_id not in view.trials:
            raise NotFoundError(f"experiment {view.experiment_id} has no trial {trial_id}")
        after, after_seq = (request.query.get(name, "0") for name in ("after", "after_seq"))
        cursor, seq = _number(after), _number(after_seq)
        rank = as_rank(request.query.get("rank", ""))  # None (every rank) if not one
        if request.query.get("tail") == "1":
            page = await self._tail(view.experiment_id, trial_id, rank)
        else:
            page = await self.source.logs(view.experiment_id, trial_id, cursor, seq, rank)
        return web.json_response(
            {"lines": page.lines, "next": page.next, "more": page.more, "next_seq": page.next_seq}
        )

    async def _tail(self, experiment_id: str, trial_id: int, rank: int | None) -> LogPage:
        """The end of a trial's log: its last lines in the experiment's store, which holds
        every trial's. A cursor past the end reads as the end (the store's size); the
        lines are read from a window before it that grows fourfold until it holds some of
        the trial's lines or reaches the start. An experiment whose lines are all in its
        event log (from before the store) is read from the start."""
        end = (await self.source.logs(experiment_id, trial_id, _PAST_THE_END, _PAST_THE_END)).next
        if end == 0:
            return await self.source.logs(experiment_id, trial_id, 0, 0, rank)
        window = _TAIL_BYTES
        while True:
            cursor = max(0, end - window)
            lines: list[dict[str, Any]] = []
            page = LogPage([], cursor, more=True, next_seq=_PAST_THE_END)
            while page.more and page.next < end:
                page = await self.source.logs(
                    experiment_id, trial_id, page.next, _PAST_THE_END, rank
                )
                lines = (lines + page.lines)[-_TAIL_LINES:]
            if lines or cursor == 0 or window >= _TAIL_MAX_BYTES:
                return LogPage(lines, page.next, page.more, _PAST_THE_END)
            window *= 4

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        body = resources.files("rung.dashboard").joinpath("static", name).read_bytes()
        return web.Response(
            body=body, content_type=types[name], headers={"Cache-Control": "no-cache"}
        )

    # ------------------------------------------------------------------ live
    async def _stream(self, request: web.Request) -> web.StreamResponse:
        followed, view = await self._view(request)
        header = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        after = _number(header) if _SEQ.fullmatch(header) else view.seq
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        followed.streams += 1  # the hub keeps following it while it is streamed
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            while True:
                current = followed.view or view
                if current.seq > after:
                    # Take the records up to now before writing: while a slow reader's
                    # write waits, more are folded, and they go in the next event.
                    data, after = _event(current, after), current.seq
                    await response.write(data)
                    continue
                if followed.task is None:
                    end = {"error": followed.error} if followed.error else {}
                    await response.write(f"event: end\ndata: {json.dumps(end)}\n\n".encode())
                    # Nothing more will come: keep the stream open, so the browser does not
                    # reconnect in a loop, until the page goes (and cancels this handler).
                    await asyncio.sleep(3600)
                await followed.wait_change(_KEEPALIVE_S)
                if (followed.view or view).seq <= after:
                    await response.write(b": keepalive\n\n")
        except ConnectionResetError:
            pass
        finally:
            followed.streams -= 1
            if task is not None:
                self._streams.discard(task)
        return response

    # ------------------------------------------------------------------ controls
    async def _control(self, request: web.Request) -> web.Response:
        self._check_post(request)
        experiment_id = self._eid(request)
        action = request.match_info["action"]
        if action not in _ACTIONS:
            raise web.HTTPNotFound(text=f"no control {action[:40]!r}; use one of {_ACTIONS}")
        return await self._act(
            lambda: self.source.control(
                experiment_id, cast("Literal['pause', 'activate', 'cancel', 'kill']", action)
            )
        )

    async def _kill_trial(self, request: web.Request) -> web.Response:
        self._check_post(request)
        experiment_id, trial_id = self._eid(request), self._tid(request)
        return await self._act(lambda: self.source.kill_trial(experiment_id, trial_id))

    async def _act(self, action: Callable[[], Awaitable[str]]) -> web.Response:
        try:
            state = await action()
        except NotFoundError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except RefusedError as exc:
            return web.json_response({"error": str(exc)}, status=403)
        except PermissionError as exc:
            return web.json_response({"error": str(exc)}, status=403)
        except ClientError as exc:
            return web.json_response({"error": str(exc)}, status=502)
        return web.json_response({"state": state})


_FINAL: Final = ("COMPLETED", "ERRORED", "CANCELED", "INVALID_HP")


def _number(text: str) -> int:
    """A cursor or record number from a query or header (clamped: a page may send the
    end-of-log cursor back rounded up, as JavaScript's numbers do)."""
    return min(int(text), _PAST_THE_END) if _SEQ.fullmatch(text) else 0


async def _prepared(_request: web.Request, response: web.StreamResponse) -> None:
    _secure(response.headers)


def _secure(headers: MutableMapping[str, str]) -> None:
    """No framing, no sniffing, no referrer, and nothing loaded from elsewhere."""
    headers.setdefault("Content-Security-Policy", _CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")


def _listed(ref: ExperimentRef, error: str | None) -> dict[str, Any]:
    """A list row from what the listing knows, for an experiment not followed (or that
    could not be read: ``error``)."""
    best = None
    if ref.best is not None and ref.best_trial is not None:
        best = {"trial_id": ref.best_trial, "value": ref.best, "length": None}
    return {
        "experiment_id": ref.experiment_id,
        "name": ref.name or "",
        "labels": list(ref.labels),
        "state": ref.state,
        "progress": ref.progress,
        "best": best,
        "counts": {},
        "sparkline": "",
        "note": error or "open it for its details",
        **({"error": error} if error else {}),
    }


def _axis_names(view: ExperimentView) -> list[str]:
    from rung.dashboard.importance import params_from_space  # noqa: PLC0415

    names = [p.name for p in params_from_space(view.created.config.get("hyperparameters") or {})]
    return [*names, view.metric] if view.metric else names


def _event(view: ExperimentView, after: int) -> bytes:
    """One server-sent event: the timeline entries after record ``after`` up to the
    view's newest (its id), and whether older entries were dropped from memory."""
    entries = [e for e in view.activity if e["seq"] > after]
    oldest = view.activity[0]["seq"] if view.activity else 0
    data = {
        "from": after,
        "to": view.seq,
        "state": view.state,
        "entries": entries,
        # Entries older than the view keeps were dropped: the page has a hole there.
        "gap": len(view.activity) == view.activity.maxlen and oldest > after + 1,
    }
    return f"id: {view.seq}\ndata: {json.dumps(data)}\n\n".encode()
