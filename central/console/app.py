"""The fire brigade's web console: an ASGI app over the store, pushed live by server-sent events.

`create_app(store, live, settings)` is the one entry point; the service runs it under uvicorn.
Every page reads the store; every change anybody makes (ingest, the escalation timer, a
colleague's click) calls `live.changed()`, and each open browser's `/events` stream wakes and
sends the new queue. The browser renders the queue, ages it, sounds new fires and shows when its
own link or the broker's is down (static/console.js).

Security: per-person accounts (argon2, central/accounts.py), a signed session cookie that ends
with the shift (`session_minutes`), a CSRF token in the session checked on every POST (form field
`csrf` or header `X-CSRF-Token`), roles checked on every route, every action audited, and a
strict Content-Security-Policy (all scripts and styles come from the package).
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from central import accounts
from central.console.settings import ConsoleSettings
from central.console.sound import tones
from central.live import LiveState
from central.store import OUTCOMES, ROLES, Conflict, Store, StoreError, label_of

HERE = Path(__file__).resolve().parent
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}  # viewer < dispatcher < supervisor
KINDS = ("alarm", "fault", "smoke", "person", "reading", "telemetry")
OUTCOME_LABELS = {
    "fire": "Fire",
    "unwanted": "Unwanted signal",
    "test": "Test",
    "fault": "Fault",
}
CATEGORY_LABELS = {"fire": "FIRE", "smoke": "SMOKE", "fault": "FAULT", "test": "TEST"}
#: failed logins per user name within LOCK_WINDOW_S before the name is locked for LOCK_S
LOCK_AFTER, LOCK_WINDOW_S, LOCK_S = 5, 600, 60


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Denied(Exception):
    def __init__(self, status: int, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


class _SecurityHeaders:
    """CSP and friends on every response: only the package's own scripts, styles and images."""

    def __init__(self, app: ASGIApp, tile_url: str | None) -> None:
        self.app = app
        img = "'self' data:"
        if tile_url:
            parts = urlsplit(tile_url.replace("{s}", "a"))
            if parts.scheme and parts.netloc:
                host = parts.netloc
                if "{s}" in tile_url:
                    host = "*." + host.split(".", 1)[1] if "." in host else host
                img += f" {parts.scheme}://{host}"
        self.headers = [
            (
                b"content-security-policy",
                (
                    "default-src 'self'; script-src 'self'; style-src 'self'; "
                    f"img-src {img}; connect-src 'self'; media-src 'self'; "
                    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
                ).encode(),
            ),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Snapshots:
    """The live queue as every screen sees it, built once per store revision and shared."""

    MIN_INTERVAL_S = 0.1

    def __init__(self, store: Store, live: LiveState, settings: ConsoleSettings) -> None:
        self.store, self.live, self.settings = store, live, settings
        self._lock = asyncio.Lock()
        self._cached: tuple[int, str, dict[str, Any]] | None = None
        self._built = 0.0

    async def get(self) -> tuple[int, str, dict[str, Any]]:
        async with self._lock:
            cached = self._cached
            if (
                cached is not None
                and cached[0] == self.live.revision
                and not self._hold_due(cached)
            ):
                return cached
            # a burst of changes (ingest under load): at most one build per MIN_INTERVAL_S,
            # except when a new alarm came in since the last build: that one goes out at once
            wait = self._built + self.MIN_INTERVAL_S - time.monotonic()
            urgent = cached is None or self.live.urgent_revision > cached[0]
            if wait > 0 and not urgent:
                await asyncio.sleep(wait)
            released = await run_in_threadpool(self.store.release_expired_holds, now_ms())
            if released:  # a hold ran out: back in everybody's queue
                self.live.changed()
            revision = self.live.revision
            data = await run_in_threadpool(self.build)
            self._built = time.monotonic()
            data["revision"] = revision
            body = json.dumps(data, default=str, separators=(",", ":"))
            self._cached = (revision, body, data)
            return self._cached

    @staticmethod
    def _hold_due(cached: tuple[int, str, dict[str, Any]]) -> bool:
        now = now_ms()
        return any(
            i["status"] == "held" and (i["held_until_ms"] or 0) <= now for i in cached[2]["queue"]
        )

    def build(self) -> dict[str, Any]:
        now = now_ms()
        incidents = self.store.queue(now)
        # only the queue's gateways are decoded: the rest of the city is two counts
        gateways = {g["site"]: g for g in self.store.gateways({i["site"] for i in incidents})}
        names = {u["username"]: u["display_name"] for u in self.store.users()}
        queue = [queue_item(inc, gateways.get(inc["site"]), names) for inc in incidents]
        faults = self.store.faults()
        total, unwell = self.store.gateway_counts()
        return {
            "now_ms": now,
            "live": self.live.snapshot(),
            "queue": queue,
            "faults": len(faults),
            "silent": unwell,
            "gateways": total,
            "escalate_after_s": self.settings.escalate_after_s,
        }


def queue_item(
    inc: dict[str, Any], gw: dict[str, Any] | None, names: dict[str, str]
) -> dict[str, Any]:
    """One queue line: the incident plus what a dispatcher reads first (where, which sensor)."""
    gw = gw or {}
    district, ward, gateway = (inc["site"].split("/", 2) + ["", ""])[:3]
    return {
        **{
            k: inc[k]
            for k in (
                "id",
                "site",
                "category",
                "status",
                "owner",
                "summary",
                "source",
                "event_count",
                "received_ms",
                "last_ms",
                "taken_ms",
                "held_until_ms",
                "dispatched_ms",
                "escalated_ms",
                "cleared_ms",
                "revision",
                "test",
            )
        },  # fmt: skip
        "owner_name": names.get(inc["owner"] or "", inc["owner"]),
        "label": label_of(gw.get("labels"), inc["source"]),
        # the other sensors of a grouped incident, so that "x3" never hides a second sensor
        "more": [
            label_of(gw.get("labels"), src) or src
            for src in inc.get("sources", ())
            if src != inc["source"]
        ],
        "name": gw.get("name"),
        "address": gw.get("address"),
        "district": district,
        "ward": ward,
        "gateway": gateway,
        "gateway_silent": bool(gw.get("silent")) or gw.get("online") is False,
    }


def _local(ms: int | None, fmt: str) -> str:
    if not ms:
        return "—"
    return datetime.fromtimestamp(ms / 1000).strftime(fmt)


def _parse_local(value: str | None) -> int | None:
    """A `datetime-local` form value (the console host's time zone) → epoch ms."""
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError as exc:
        raise _Denied(400, f"not a date and time: {value!r} (use YYYY-MM-DDTHH:MM)") from exc


def _safe_next(value: str | None, default: str = "/") -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def _csv_cell(value: Any) -> str:
    """Spreadsheet-safe: a cell starting with = + - @ is not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def create_app(
    store: Store,
    live: LiveState,
    settings: ConsoleSettings,
    *,
    snapshots: dict[tuple[str, str], tuple[bytes, int]] | None = None,
) -> Starlette:
    """The console app. `snapshots` {(site, camera): (jpeg, ms)} is filled by ingest (or later)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["hms"] = lambda ms: _local(ms, "%H:%M:%S")
    env.filters["label_of"] = lambda source, labels: label_of(labels, source) or source
    env.filters["dt"] = lambda ms: _local(ms, "%Y-%m-%d %H:%M:%S")
    env.filters["pretty"] = lambda v: json.dumps(v, indent=1, sort_keys=True, default=str)
    env.globals.update(
        settings=settings,
        OUTCOMES=OUTCOMES,
        OUTCOME_LABELS=OUTCOME_LABELS,
        CATEGORY_LABELS=CATEGORY_LABELS,
        KINDS=KINDS,
    )
    snaps = _Snapshots(store, live, settings)
    sounds = tones()
    failures: dict[str, list[float]] = {}

    def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(functools.partial(fn, *args, **kwargs))

    # --- sessions, roles, CSRF ---------------------------------------------------------------
    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    async def check_csrf(request: Request) -> None:
        expected = request.session.get("csrf")
        given = request.headers.get("x-csrf-token")
        if given is None:
            form = await request.form()
            given = form.get("csrf")
        if (
            not expected
            or not isinstance(given, str)
            or not secrets.compare_digest(expected, given)
        ):
            raise _Denied(403, "the form has expired or did not come from this console: reload")

    def session_user(request: Request) -> dict[str, Any] | None:
        session = request.session
        name = session.get("user")
        if not name:
            return None
        if session.get("exp", 0) < now_ms():
            store.audit(name, "session_expired", detail={"login_ms": session.get("login_ms")})
            session.clear()
            request.state.expired = True
            return None
        user = store.user(name)
        if user is None or user["disabled"]:
            session.clear()
            return None
        return user

    def guard(role: str = "viewer", *, api: bool = False) -> Callable[..., Any]:
        def deco(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            @functools.wraps(fn)
            async def endpoint(request: Request) -> Response:
                request.state.api = api
                user = await db(session_user, request)
                if user is None:
                    raise _Denied(401, "log in first", login=True)
                request.state.user = user
                if ROLE_RANK[user["role"]] < ROLE_RANK[role]:
                    raise _Denied(403, f"this needs the {role} role; you are {user['role']}")
                if request.method == "POST":
                    await check_csrf(request)
                return await fn(request, user)

            return endpoint

        return deco

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        user = getattr(request.state, "user", None)
        context = {
            "user": user,
            "can_work": bool(user) and ROLE_RANK[user["role"]] >= ROLE_RANK["dispatcher"],
            "is_supervisor": bool(user) and user["role"] == "supervisor",
            "csrf": csrf_token(request),
            "path": request.url.path,
            **context,
        }
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["cache-control"] = "no-store"
        return response

    async def denied(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Denied)
        if getattr(request.state, "api", False) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if exc.login:
            query = {"next": request.url.path}
            if getattr(request.state, "expired", False):
                query["expired"] = "1"
            return RedirectResponse("/login?" + urlencode(query), status_code=303)
        return render(request, "error.html", {"message": exc.message}, exc.status)

    # --- login -------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        message = None
        if request.query_params.get("expired"):
            message = "Your session ended (shift length reached). Log in again."
        return render(
            request,
            "login.html",
            {"message": message, "next": _safe_next(request.query_params.get("next"))},
        )

    async def login(request: Request) -> Response:
        await check_csrf(request)
        form = await request.form()
        name = str(form.get("username", "")).strip()[:64]
        password = str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "")))
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        recent = [t for t in failures.get(name, []) if now - t < LOCK_WINDOW_S]
        failures[name] = recent
        if len(recent) >= LOCK_AFTER and now - recent[-1] < LOCK_S:
            await db(store.audit, name or "-", "login_locked", detail={"client": client})
            return render(
                request,
                "login.html",
                {"message": f"Too many failed logins: wait {LOCK_S} s.", "next": target},
                429,
            )
        user = await db(store.user, name) if name else None
        ok, rehash = await run_in_threadpool(
            accounts.verify, user["password_hash"] if user else None, password
        )
        if not ok or user is None or user["disabled"]:
            recent.append(now)
            await db(store.audit, name or "-", "login_failed", detail={"client": client})
            return render(
                request,
                "login.html",
                {"message": "Wrong user name or password.", "next": target},
                401,
            )
        failures.pop(name, None)
        if rehash:
            await db(store.set_password_hash, name, rehash)
        request.session.clear()
        login_ms = now_ms()
        request.session.update(
            user=name,
            login_ms=login_ms,
            exp=login_ms + int(settings.session_minutes * 60_000),
            csrf=secrets.token_urlsafe(32),
        )
        await db(store.audit, name, "login", detail={"client": client, "role": user["role"]})
        return RedirectResponse(target, status_code=303)

    @guard()
    async def logout(request: Request, user: dict[str, Any]) -> Response:
        await db(store.audit, user["username"], "logout")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- the queue and server push -----------------------------------------------------------
    @guard()
    async def queue_page(request: Request, user: dict[str, Any]) -> Response:
        _, body, _ = await snaps.get()
        return render(request, "queue.html", {"initial": body.replace("<", "\\u003c")})

    @guard(api=True)
    async def events(request: Request, user: dict[str, Any]) -> Response:
        expires = int(request.session.get("exp", 0))

        async def stream() -> Any:
            yield "retry: 1500\n\n"
            seen: int | None = None
            last_sent = time.monotonic()
            while True:
                if now_ms() >= expires:
                    yield "event: expired\ndata: {}\n\n"
                    return
                revision, body, data = await snaps.get()
                if revision != seen:
                    yield f"id: {revision}\nevent: state\ndata: {body}\n\n"
                    seen, last_sent = revision, time.monotonic()
                holds = [i["held_until_ms"] for i in data["queue"] if i["status"] == "held"]
                timeout = settings.keepalive_s - (time.monotonic() - last_sent)
                if holds:
                    timeout = min(timeout, (min(holds) - now_ms()) / 1000 + 0.05)
                timeout = min(timeout, (expires - now_ms()) / 1000)
                woke = await live.wait(seen, max(0.05, timeout))
                if woke == seen and time.monotonic() - last_sent >= settings.keepalive_s - 0.05:
                    yield f"event: ping\ndata: {now_ms()}\n\n"  # keep-alive + watchdog
                    last_sent = time.monotonic()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @guard(api=True)
    async def api_queue(request: Request, user: dict[str, Any]) -> Response:
        _, body, _ = await snaps.get()
        return Response(body, media_type="application/json")

    # --- incidents ---------------------------------------------------------------------------
    async def incident_context(incident_id: int) -> dict[str, Any]:
        inc = await db(store.incident, incident_id)
        if inc is None:
            raise _Denied(404, f"no incident {incident_id}")
        gw = await db(store.gateway, inc["site"]) or {}
        site = await db(store.site, inc["site"]) or {}
        labels = gw.get("labels") or {}
        cameras = sorted(
            {
                e["source"].split("/", 1)[1]
                for e in inc["events"]
                if e["kind"] in ("smoke", "person") and e["source"].startswith("cam/")
            }
            | ({inc["source"].split("/", 1)[1]} if inc["source"].startswith("cam/") else set())
        )
        snaps_here = [c for c in cameras if (inc["site"], c) in app.state.snapshots]
        names = {u["username"]: u["display_name"] for u in await db(store.users)}
        return {
            "inc": inc,
            "gw": gw,
            "site": site,
            "label": label_of(labels, inc["source"]),
            "labels": labels,
            "cameras": snaps_here,
            "owner_name": names.get(inc["owner"] or "", inc["owner"]),
            "names": names,
            "now": now_ms(),
        }

    @guard()
    async def incident_page(request: Request, user: dict[str, Any]) -> Response:
        ctx = await incident_context(int(request.path_params["id"]))
        return render(request, "incident.html", ctx)

    @guard()
    async def incident_panel(request: Request, user: dict[str, Any]) -> Response:
        ctx = await incident_context(int(request.path_params["id"]))
        return render(request, "_panel.html", ctx)

    @guard(api=True)
    async def api_incident(request: Request, user: dict[str, Any]) -> Response:
        ctx = await incident_context(int(request.path_params["id"]))
        out = {**ctx["inc"], "site_card": ctx["site"], "gateway": ctx["gw"], "label": ctx["label"]}
        return JSONResponse(json.loads(json.dumps(out, default=str)))

    @guard("dispatcher")
    async def incident_action(request: Request, user: dict[str, Any]) -> Response:
        incident_id = int(request.path_params["id"])
        action = request.path_params["action"]
        form = await request.form()
        actor = user["username"]
        note = str(form.get("note", "")).strip()
        try:
            if action == "take":
                await db(store.take, incident_id, actor, force=form.get("force") == "1")
            elif action == "release":
                await db(store.release, incident_id, actor)
            elif action == "hold":
                try:
                    minutes = float(str(form.get("minutes", "")))
                except ValueError:
                    raise StoreError("hold: give the minutes as a number") from None
                await db(store.hold, incident_id, actor, minutes * 60, note)
            elif action == "dispatch":
                await db(store.dispatch, incident_id, actor, note)
            elif action == "resolve":
                outcome = str(form.get("outcome", ""))
                if outcome not in OUTCOMES:
                    raise StoreError(
                        "choose an outcome before closing: "
                        + ", ".join(OUTCOME_LABELS[o] for o in OUTCOMES)
                    )
                await db(store.resolve, incident_id, actor, outcome, note)
            else:
                raise _Denied(404, f"no action {action!r}")
        except Conflict as exc:
            ctx = await incident_context(incident_id)
            ctx.update(conflict=exc.owner, conflict_name=ctx["names"].get(exc.owner or ""))
            if action != "take":
                ctx["error"] = str(exc)
            return render(request, "incident.html", ctx, 409)
        except StoreError as exc:
            ctx = await incident_context(incident_id)
            ctx["error"] = str(exc)
            return render(request, "incident.html", ctx, 400)
        live.changed()
        return RedirectResponse(f"/incident/{incident_id}", status_code=303)

    # --- sites, gateways, faults, map --------------------------------------------------------
    def site_of(request: Request) -> str:
        p = request.path_params
        return f"{p['district']}/{p['ward']}/{p['gateway']}"

    @guard("supervisor")
    async def runcard_save(request: Request, user: dict[str, Any]) -> Response:
        site = site_of(request)
        form = await request.form()
        fields: dict[str, Any] = {}
        for key in store.SITE_FIELDS:
            if key not in form:
                continue
            value = str(form.get(key, "")).strip()[:4000]
            if key in ("latitude", "longitude"):
                if not value:
                    fields[key] = None
                    continue
                try:
                    number = float(value)
                except ValueError:
                    raise _Denied(400, f"{key}: not a number: {value!r}") from None
                limit = 90 if key == "latitude" else 180
                if not -limit <= number <= limit:
                    raise _Denied(400, f"{key} {number} is outside ±{limit}")
                fields[key] = number
            else:
                fields[key] = value or None
        await db(store.upsert_site, site, fields, user["username"])
        live.changed()
        return RedirectResponse(_safe_next(str(form.get("next", "")), "/gateway/" + site), 303)

    async def gateway_context(site: str) -> dict[str, Any]:
        gw = await db(store.gateway, site)
        if gw is None:
            raise _Denied(404, f"no gateway {site}")
        district, ward, gateway = site.split("/", 2)
        return {
            "gw": gw,
            "site": await db(store.site, site) or {},
            "faults": [f for f in await db(store.faults, active_only=False) if f["site"] == site],
            "open": [i for i in await db(store.queue) if i["site"] == site],
            "events": await db(
                store.history, district=district, ward=ward, gateway=gateway, limit=50
            ),
            "now": now_ms(),
        }

    @guard()
    async def gateway_page(request: Request, user: dict[str, Any]) -> Response:
        return render(request, "gateway.html", await gateway_context(site_of(request)))

    @guard()
    async def gateways_page(request: Request, user: dict[str, Any]) -> Response:
        gws = await db(store.gateways)
        by_site = {g["site"]: g for g in gws}
        faults = await db(store.faults)
        for f in faults:
            gw = by_site.get(f["site"]) or {}
            f["name"] = gw.get("name")
            f["label"] = label_of(gw.get("labels"), f["source"])
        return render(
            request,
            "gateways.html",
            {
                "faults": faults,
                "gateways": gws,
                "unwell": [g for g in gws if g["silent"] or g["online"] is False],
                "now": now_ms(),
            },
        )

    @guard(api=True)
    async def api_gateways(request: Request, user: dict[str, Any]) -> Response:
        return JSONResponse(json.loads(json.dumps(await db(store.gateways), default=str)))

    @guard(api=True)
    async def api_faults(request: Request, user: dict[str, Any]) -> Response:
        active_only = request.query_params.get("all") != "1"
        return JSONResponse(await db(store.faults, active_only=active_only))

    @guard(api=True)
    async def api_sites(request: Request, user: dict[str, Any]) -> Response:
        """The map's markers: every gateway with coordinates, its health and open incidents."""
        _, _, data = await snaps.get()
        open_by_site: dict[str, list[str]] = {}
        for item in data["queue"]:
            open_by_site.setdefault(item["site"], []).append(item["category"])
        out = []
        for g in await db(store.gateways):
            if g["latitude"] is None or g["longitude"] is None:
                continue
            out.append(
                {
                    "site": g["site"],
                    "name": g["name"],
                    "address": g["address"],
                    "lat": g["latitude"],
                    "lon": g["longitude"],
                    "silent": g["silent"] or g["online"] is False,
                    "open": open_by_site.get(g["site"], []),
                }
            )
        return JSONResponse(out)

    @guard()
    async def map_page(request: Request, user: dict[str, Any]) -> Response:
        return render(request, "map.html", {})

    @guard()
    async def snapshot(request: Request, user: dict[str, Any]) -> Response:
        key = (site_of(request), request.path_params["camera"])
        found = app.state.snapshots.get(key)
        if not found:
            raise _Denied(404, "no snapshot from this camera")
        jpeg, ms = found
        return Response(
            jpeg,
            media_type="image/jpeg",
            headers={"cache-control": "no-store", "x-snapshot-ms": str(ms)},
        )

    # --- history, report, quarantine, users, audit -------------------------------------------
    def history_filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        kind = q.get("kind") or None
        if kind and kind not in KINDS:
            raise _Denied(400, f"kind: one of {', '.join(KINDS)}")
        try:
            limit = max(1, min(int(q.get("limit") or 500), 50_000))
        except ValueError:
            raise _Denied(400, "limit: a number") from None
        return {
            "district": q.get("district") or None,
            "ward": q.get("ward") or None,
            "gateway": q.get("gateway") or None,
            "kind": kind,
            "since_ms": _parse_local(q.get("since")),
            "until_ms": _parse_local(q.get("until")),
            "text": (q.get("q") or "").strip() or None,
            "limit": limit,
        }

    @guard()
    async def history_page(request: Request, user: dict[str, Any]) -> Response:
        filters = history_filters(request)
        rows = await db(store.history, **filters)
        labels = {g["site"]: g["labels"] for g in await db(store.gateways)}
        return render(
            request,
            "history.html",
            {
                "rows": rows,
                "labels": labels,
                "q": request.query_params,
                "query": str(request.query_params),
                "limit": filters["limit"],
            },
        )

    @guard()
    async def history_csv(request: Request, user: dict[str, Any]) -> Response:
        filters = history_filters(request)
        if "limit" not in request.query_params:
            filters["limit"] = 50_000
        rows = await db(store.history, **filters)
        labels = {g["site"]: g["labels"] for g in await db(store.gateways)}
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            ["received", "event_time", "kind", "test", "severity", "district", "ward",
             "gateway", "source", "label", "incident_id", "event_id", "data"]
        )  # fmt: skip
        for r in rows:
            writer.writerow(
                [_csv_cell(v) for v in (
                    _local(r["received_ms"], "%Y-%m-%d %H:%M:%S"),
                    _local(r["time_ms"], "%Y-%m-%d %H:%M:%S"),
                    r["kind"], int(r["test"]), r["severity"], r["district"], r["ward"],
                    r["gateway"], r["source"], label_of(labels.get(r["site"]), r["source"]),
                    r["incident_id"], r["id"],
                    json.dumps(r["data"], sort_keys=True, separators=(",", ":")),
                )]
            )  # fmt: skip
        await db(store.audit, user["username"], "history_export", detail={"rows": len(rows)})
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="history-{stamp}.csv"'},
        )

    @guard("supervisor")
    async def report_page(request: Request, user: dict[str, Any]) -> Response:
        q = request.query_params
        until = _parse_local(q.get("until")) or now_ms()
        since = _parse_local(q.get("since")) or until - 24 * 3600 * 1000
        report = await db(store.report, since, until, settings.target_s)
        counted = [b for cat, b in report["by"].items() if cat != "test"]  # drills don't count
        total = sum(b["count"] for b in counted)
        within = sum(b["within_target"] for b in counted)
        return render(
            request,
            "report.html",
            {
                "report": report,
                "total": total,
                "within": within,
                "share": within / total if total else None,
                "since": datetime.fromtimestamp(since / 1000).strftime("%Y-%m-%dT%H:%M"),
                "until": datetime.fromtimestamp(until / 1000).strftime("%Y-%m-%dT%H:%M"),
            },
        )

    @guard()
    async def quarantine_page(request: Request, user: dict[str, Any]) -> Response:
        total, rows = await db(store.quarantined, 100)
        return render(request, "quarantine.html", {"total": total, "rows": rows})

    @guard("supervisor")
    async def users_page(request: Request, user: dict[str, Any]) -> Response:
        return render(
            request,
            "users.html",
            {"users": await db(store.users), "audit": await db(store.audit_log, 300)},
        )

    async def sound(request: Request) -> Response:
        data = sounds.get(request.path_params["name"])
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="audio/wav", headers={"cache-control": "max-age=3600"})

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", queue_page),
        Route("/events", events),
        Route("/incident/{id:int}", incident_page),
        Route("/incident/{id:int}/panel", incident_panel),
        Route("/incident/{id:int}/{action:str}", incident_action, methods=["POST"]),
        Route("/gateways", gateways_page),
        Route("/gateway/{district}/{ward}/{gateway}", gateway_page),
        Route("/runcard/{district}/{ward}/{gateway}", runcard_save, methods=["POST"]),
        Route("/snap/{district}/{ward}/{gateway}/{camera}", snapshot),
        Route("/map", map_page),
        Route("/history", history_page),
        Route("/history.csv", history_csv),
        Route("/report", report_page),
        Route("/quarantine", quarantine_page),
        Route("/users", users_page),
        Route("/api/queue", api_queue),
        Route("/api/incident/{id:int}", api_incident),
        Route("/api/gateways", api_gateways),
        Route("/api/faults", api_faults),
        Route("/api/sites", api_sites),
        Route("/sound/{name}.wav", sound),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(_SecurityHeaders, tile_url=settings.tile_url),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret_key.hex(),
                session_cookie="wardgate_console",
                max_age=int(settings.session_minutes * 60),
                same_site="strict",
                https_only=settings.https_only,
            ),
        ],
        exception_handlers={_Denied: denied},
    )
    app.state.store = store
    app.state.live = live
    app.state.settings = settings
    app.state.snapshots = snapshots if snapshots is not None else {}
    return app
