"""The page's HTTP server (stdlib ThreadingHTTPServer) inside `wardgate run`.

Every action (login, failed login, sounder test, alarm reset, test alarm) is logged and reported
upstream as a `telemetry` event from source `localweb` ({"action", "from", "ok"}): the lightest
record that reaches the operations center through the outbox like everything else, without a
new event kind or topic."""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import threading
import time
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from edge import selftest
from edge.localweb import auth, cameras, pages
from edge.pipeline import NotAccepted
from protocol.events import Event, Kind

if TYPE_CHECKING:
    from edge.runtime import Gateway

log = logging.getLogger("wardgate.localweb")

#: largest request body read (a camera's zones and masks as JSON)
MAX_BODY = 64 * 1024
#: how long the page follows a test alarm (committed -> sent -> acknowledged)
TRACK_S = 60.0
#: units of a node's sensor kinds (readings carry values already in these units)
UNITS = {"smoke": "%", "heat": "°C", "co": "ppm", "temperature": "°C"}
LINE_FAULTS = {"open_circuit": "open", "short_circuit": "short"}


class TestAlarm:
    """One test alarm on its way: committed, sent (PUBACK: gone from the outbox), acknowledged."""

    __test__ = False

    def __init__(self, event_id: str, committed: float) -> None:
        self.event_id = event_id
        self.committed = committed
        self.sent: float | None = None
        self.acked: float | None = None
        self.receiver: str | None = None

    def as_dict(self) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.committed) * 1000, 1)

        return {
            "event_id": self.event_id,
            "committed": True,
            "sent_ms": ms(self.sent),
            "acked_ms": ms(self.acked),
            "receiver": self.receiver,
        }


class LocalWeb:
    """The page: started by the runtime when `[localweb] enabled`, closed at stop."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.config.localweb
        self.sessions = auth.Sessions()
        self.latest: dict[str, dict[str, Any]] = {}  # source -> last reading/alarm/fault
        self.alarms: dict[str, TestAlarm] = {}
        self.cameras = cameras.Cameras(gw)
        self._lock = threading.Lock()
        gw.add_emit_listener(self._on_event)
        gw.add_ack_listener(self._on_ack)
        host = "0.0.0.0" if self.cfg.bind == "lan" else self.cfg.bind  # noqa: S104 (peer-checked)
        self.httpd = ThreadingHTTPServer((host, self.cfg.port), _handler(self))
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.5,), name="localweb", daemon=True
        )
        self._thread.start()
        self._timer: threading.Timer | None = None
        if self.cfg.enabled_for_s:
            self._timer = threading.Timer(self.cfg.enabled_for_s, self._expire)
            self._timer.daemon = True
            self._timer.start()
        log.warning("technician page on http://%s:%d/ (LAN only)", *self.address[:2])

    def _expire(self) -> None:
        log.warning("technician page closed: enabled_for_s = %g s passed", self.cfg.enabled_for_s)
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what the gateway tells the page ------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.kind in (Kind.READING, Kind.ALARM, Kind.FAULT):
            with self._lock:
                entry = self.latest.setdefault(event.source, {"faults": {}})
                entry["at"] = time.time()
                if event.kind is Kind.READING:
                    entry["value"] = event.data.get("value")
                    entry["unit"] = event.data.get("unit")
                elif event.kind is Kind.ALARM:
                    entry["alarm"] = event.data.get("cause", "alarm")
                else:
                    code = str(event.data.get("code", "fault"))
                    if event.data.get("active", True):
                        entry["faults"][code] = True
                    else:
                        entry["faults"].pop(code, None)

    def _on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        with self._lock:
            alarm = self.alarms.get(event_id)
            if alarm is not None and alarm.acked is None:
                alarm.acked = time.monotonic()
                alarm.receiver = str(ack.get("by") or ack.get("receiver") or "")

    # --- actions ------------------------------------------------------------------------
    def report(self, action: str, client: str, ok: bool, **extra: Any) -> None:
        log.warning("technician page: %s from %s: %s", action, client, "ok" if ok else "refused")
        try:
            self.gw.emit(
                Kind.TELEMETRY, "localweb", {"action": action, "from": client, "ok": ok, **extra}
            )
        except NotAccepted:
            pass  # logged by the runtime; the action itself is not undone

    def test_alarm(self) -> TestAlarm:
        result = self.gw.run_command("test-alarm", {"source": "localweb/test"})
        alarm = TestAlarm(result["event_id"], time.monotonic())
        with self._lock:
            self.alarms[alarm.event_id] = alarm
        threading.Thread(target=self._follow, args=(alarm,), daemon=True).start()
        return alarm

    def _follow(self, alarm: TestAlarm) -> None:
        """Sent = the alarm's row left the outbox (the broker's PUBACK settled it)."""
        raw = bytes.fromhex(alarm.event_id)
        while time.monotonic() - alarm.committed < TRACK_S:
            rows = self.gw.outbox.sql(
                "SELECT count(*) FROM outbox WHERE instr(payload, ?) OR instr(payload, ?)",
                (raw, alarm.event_id.encode()),
            )
            if rows[0][0] == 0 and not self.gw.outbox.depth().get("memory_spill"):
                alarm.sent = time.monotonic()
                return
            time.sleep(0.01)

    def sensors(self) -> dict[str, Any]:
        labels = self.gw.source_labels()
        nodes: dict[str, Any] = {}
        for p in self.gw.pipelines:
            for label, node in (p.status().get("nodes") or {}).items():
                nodes[label] = {**node, "pipeline": p.name}
        with self._lock:
            latest = {k: {**v, "faults": dict(v["faults"])} for k, v in self.latest.items()}
        rows = []
        now = time.time()
        for source, entry in sorted(latest.items()):
            if source.startswith(("localweb", "test/", "pipe/", "uplink/")):
                continue
            kind = source.split("/")[-1]
            faults = list(entry["faults"])
            line = next((LINE_FAULTS[f] for f in faults if f in LINE_FAULTS), "ok")
            rows.append(
                {
                    "source": source,
                    "name": labels.get(source, ""),
                    "value": entry.get("value"),
                    "unit": entry.get("unit") or UNITS.get(kind, ""),
                    "line": line,
                    "faults": faults,
                    "alarm": entry.get("alarm"),
                    "seen_s_ago": round(now - entry["at"], 1),
                }
            )
        return {"nodes": nodes, "sensors": rows}


def _client(handler: BaseHTTPRequestHandler) -> str:
    return handler.client_address[0]


def lan_peer(address: str) -> bool:
    """A client on the LAN: private, link-local or loopback (what `bind = "lan"` answers)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_link_local or ip.is_loopback) and not ip.is_unspecified


def _handler(web: LocalWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "wardgate-localweb"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, _client(self), *args)

        def parse_request(self) -> bool:
            """`bind = "lan"` listens everywhere: a client from outside the LAN gets 403."""
            if not super().parse_request():
                return False
            if web.cfg.bind == "lan" and not lan_peer(_client(self)):
                log.warning("technician page: refused %s (not on the LAN)", _client(self))
                self.send_error(403, "the technician's page answers the LAN only")
                return False
            return True

        def _cookie(self, name: str) -> str | None:
            jar = cookies.SimpleCookie(self.headers.get("Cookie", ""))
            return jar[name].value if name in jar else None

        def _send(
            self, code: int, body: str | bytes, ctype: str = "text/html; charset=utf-8", **hdr: str
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline'")
            for k, v in hdr.items():
                self.send_header(k.replace("_", "-"), v)
            try:
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the browser left (a new page)
                log.debug("%s left before the response was sent", _client(self))

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, default=str), "application/json")

        def _redirect(self, to: str, **hdr: str) -> None:
            self.send_response(303)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            for k, v in hdr.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()

        def _session(self) -> tuple[str | None, str | None]:
            sid = self._cookie("wg_session")
            return sid, web.sessions.csrf(sid)

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            path = self.path.split("?")[0]
            if path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
                return
            if path == "/login":
                # the form's token is the cookie's (double submit); a reload keeps both
                pre = self._cookie("wg_pre") or auth.Sessions().create()[1]
                self._send(
                    200,
                    pages.login(pre, "failed" in self.path),
                    Set_Cookie=f"wg_pre={pre}; HttpOnly; SameSite=Strict; Path=/login",
                )
                return
            sid, csrf = self._session()
            if csrf is None:
                if path.startswith("/api/"):
                    self._json(401, {"error": "log in first"})
                else:
                    self._redirect("/login")
                return
            gw_id = web.gw.config.gateway.id
            if path in ("/", "/selftest"):
                self._send(200, pages.page("selftest", gw_id, csrf))
            elif path == "/sensors":
                self._send(200, pages.page("sensors", gw_id, csrf))
            elif path == "/alarm":
                self._send(200, pages.page("alarm", gw_id, csrf))
            elif path == "/cameras":
                self._send(200, pages.page("cameras", gw_id, csrf))
            elif path == "/api/cameras":
                self._json(200, web.cameras.info())
            elif path.startswith("/camera/") and path.endswith(".jpg"):
                jpeg = web.cameras.jpeg(path[len("/camera/") : -len(".jpg")])
                if jpeg is None:
                    self._send(503, "no frame from this camera yet", "text/plain")
                else:
                    self._send(200, jpeg, "image/jpeg")
            elif path == "/api/selftest":
                self._json(200, selftest.report(web.gw))
            elif path == "/api/sensors":
                self._json(200, web.sensors())
            elif path.startswith("/api/test-alarm/"):
                alarm = web.alarms.get(path.rsplit("/", 1)[-1])
                self._json(404, {"error": "unknown"}) if alarm is None else self._json(
                    200, alarm.as_dict()
                )
            else:
                self._send(404, "not found", "text/plain")

        def _body(self) -> str:
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            return self.rfile.read(length).decode(errors="replace")

        def _form(self, body: str) -> dict[str, str]:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return {}
            return {k: v[0] for k, v in parse_qs(body).items()}

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            body = self._body()
            form = self._form(body)
            if path == "/login":
                self._login(form)
                return
            sid, csrf = self._session()
            if csrf is None:
                self._json(401, {"error": "log in first"})
                return
            if form.get("csrf") != csrf and self.headers.get("X-CSRF-Token") != csrf:
                web.report("csrf-refused " + path, _client(self), False)
                self._json(403, {"error": "CSRF token missing or wrong: reload the page"})
                return
            if path == "/logout":
                web.sessions.drop(sid)
                self._redirect("/login", Set_Cookie="wg_session=; Max-Age=0; Path=/")
            elif path == "/api/test-alarm":
                try:
                    alarm = web.test_alarm()
                except Exception as exc:
                    web.report("test-alarm", _client(self), False, error=str(exc)[:80])
                    self._json(500, {"error": str(exc)})
                    return
                web.report("test-alarm", _client(self), True, event_id=alarm.event_id)
                self._json(200, alarm.as_dict())
            elif path in ("/api/sensor_silence", "/api/sensor_reset"):
                name = path.rsplit("/", 1)[-1]
                sources = [s for s in form.get("sources", "").split(",") if s] or None
                try:
                    result = web.gw.run_command(name, {"sources": sources} if sources else {})
                except Exception as exc:
                    web.report(name, _client(self), False, error=str(exc)[:80])
                    self._json(400, {"error": str(exc)})
                    return
                web.report(name, _client(self), True)
                self._json(200, {"result": result})
            elif path.startswith("/api/zones/"):
                self._save_zones(path[len("/api/zones/") :], body)
            else:
                self._json(404, {"error": "not found"})

        def _save_zones(self, camera: str, body: str) -> None:
            """Zones and masks of one camera -> the conf.d drop-in, validated, then reload."""
            client = _client(self)
            try:
                sent = json.loads(body)
                if not isinstance(sent, dict):
                    raise cameras.SaveError(["send a JSON object {zones, masks}"])
                saved = web.cameras.save(camera, sent)
            except (ValueError, cameras.SaveError) as exc:  # JSONDecodeError is a ValueError
                problems = getattr(exc, "problems", None) or [str(exc)]
                web.report("zones", client, False, camera=camera[:64], error=problems[0][:200])
                self._json(400, {"problems": problems})
                return
            except Exception as exc:  # the reload itself failed: say so, the file is written
                web.report("zones", client, False, camera=camera[:64], error=str(exc)[:200])
                self._json(500, {"problems": [f"saved, but the reload failed: {exc}"]})
                return
            # upstream: the shapes themselves, so the fleet can adopt them into its inventory
            web.report("zones", client, True, camera=camera, zones=saved["zones"],
                       masks=saved["masks"], file=saved["file"])  # fmt: skip
            self._json(200, saved)

        def _login(self, form: dict[str, str]) -> None:
            client = _client(self)
            pre = self._cookie("wg_pre")
            if not pre or form.get("csrf") != pre:
                web.report("login", client, False, why="csrf")
                self._send(403, "login form expired: reload the page", "text/plain")
                return
            if web.sessions.locked_out():
                web.report("login", client, False, why="locked out")
                self._redirect("/login?failed=locked")
                return
            if not auth.verify_password(form.get("password", ""), web.cfg.password_hash or ""):
                web.sessions.failed()
                web.report("login", client, False, why="wrong password")
                self._redirect("/login?failed=1")
                return
            sid, _ = web.sessions.create()
            web.report("login", client, True)
            self._redirect("/", Set_Cookie=f"wg_session={sid}; HttpOnly; SameSite=Strict; Path=/")

    return Handler


def escape(text: Any) -> str:
    return html.escape(str(text))
