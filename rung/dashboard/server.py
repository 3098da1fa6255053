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
import json
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
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
    parallel_note,
    trial_page,
    trial_rows,
    why,
)
from rung.dashboard.source import Source, valid_id
from rung.searcher.client import ClientError, NotFoundError, RefusedError

__all__ = ["Dashboard"]

log = structlog.get_logger("rung.dashboard")

_ACTIONS: Final = ("pause", "activate", "cancel", "kill")
_NUMBER: Final = re.compile(r"[0-9]{1,9}")  # a trial, bracket or rung number
_SEQ: Final = re.compile(r"[0-9]{1,18}")  # a record number or a log cursor
_PAST_THE_END: Final = 2**62
_TAIL_BYTES: Final = 256 * 1024  # how much of the trial log store a trial page opens on
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
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.read_only = read_only or not source.writable
        self.hub = Hub(source, context_root=context_root)
        self.token = secrets.token_urlsafe(24)
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
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ guard
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._host_allowed(request.host):
            return web.Response(
                status=421,
                text=f"this dashboard answers only to {self._hosts()}; open it by that name",
            )
        try:
            return await handler(request)
        except NotFoundError as exc:
            return self._error_page(404, str(exc))
        except DashboardError as exc:
            return self._error_page(503, str(exc))

    def _hosts(self) -> set[str]:
        port = self.address.port if self.address else self.port
        names = {self.host, "localhost", "127.0.0.1", "[::1]"}
        if self.host in ("0.0.0.0", "::"):  # noqa: S104 (told to listen everywhere)
            return set()
        return {f"{name}:{port}" for name in names}

    def _host_allowed(self, host: str) -> bool:
        allowed = self._hosts()
        return not allowed or host in allowed

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
        if origin is not None and origin.removeprefix("http://") not in self._hosts() | {
            request.host
        }:
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
        refs = await self.source.experiments()

        async def one(ref: Any) -> dict[str, Any]:
            try:
                followed = await asyncio.wait_for(self.hub.follow(ref.experiment_id), _LIST_WAIT_S)
            except (TimeoutError, DashboardError, ClientError) as exc:
                return {
                    "experiment_id": ref.experiment_id,
                    "name": ref.name or "",
                    "labels": list(ref.labels),
                    "state": ref.state,
                    "error": str(exc) or "still loading",
                }
            assert followed.view is not None  # noqa: S101 (follow returns loaded views)
            return experiment_summary(followed.view)

        return list(await asyncio.gather(*(one(ref) for ref in refs)))

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
            }
            for t in view.trials.values()
        ]
        return web.json_response(summary)

    async def _experiment(self, request: web.Request) -> web.Response:
        _, view = await self._view(request)
        options = Options.parse(request.query)
        rows, matching = trial_rows(view, options)
        return self._render(
            "experiment.html",
            e=experiment_summary(view),
            sections=self._rendered(view, options),
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
        )

    def clear_cache(self) -> None:
        """Forget the sections rendered so far (benchmarks time a first rendering)."""
        self._cache.clear()

    def _rendered(self, view: ExperimentView, options: Options) -> dict[str, str]:
        """The sections for these options at the view's record; several pages open on
        one experiment share one rendering per record."""
        key = (view.experiment_id, view.seq, options)
        sections = self._cache.get(key)
        if sections is None:
            sections = experiment_sections(view, options)
            if len(self._cache) >= _CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = sections
        return dict(sections)

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
        _, view = await self._view(request)
        options = Options.parse(request.query)
        sections = self._rendered(view, options)
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
        return web.json_response({"seq": view.seq, "sections": sections})

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
        after = request.query.get("after", "0")
        cursor = int(after) if _SEQ.fullmatch(after) else 0
        if request.query.get("tail") == "1":
            # The page opens on the log's end: a cursor past the end reads as the end
            # (the store's size), and the page starts _TAIL_BYTES before it.
            end = await self.source.logs(view.experiment_id, trial_id, _PAST_THE_END)
            cursor = max(0, end.next - _TAIL_BYTES)
        page = await self.source.logs(view.experiment_id, trial_id, cursor)
        return web.json_response({"lines": page.lines, "next": page.next, "more": page.more})

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
        after = int(header) if _SEQ.fullmatch(header) else view.seq
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        followed.streams += 1  # the hub keeps following it while it is streamed
        try:
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


async def _prepared(_request: web.Request, response: web.StreamResponse) -> None:
    _secure(response.headers)


def _secure(headers: MutableMapping[str, str]) -> None:
    """No framing, no sniffing, no referrer, and nothing loaded from elsewhere."""
    headers.setdefault("Content-Security-Policy", _CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")


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
