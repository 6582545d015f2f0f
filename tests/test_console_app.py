"""The fire brigade's web console: auth, CSRF, roles, expiry and the workflow over HTTP
(Starlette's TestClient), then the live screens in Debian's headless Chromium against a real
uvicorn server: two open pages, the sound, ownership, escalation, the broker and offline banners.

Screenshots go to $WARDGATE_CONSOLE_SHOTS when set (docs/console/ is made that way), else tmp.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from central import accounts
from central.console import app as console_app
from central.console.app import create_app
from central.console.settings import ConsoleSettings
from central.live import LiveState
from central.store import Store
from protocol.events import Event, Kind, now_ms
from tests.central_support import CHROMIUM, CHROMIUM_ARGS

SITE = "d03/w12/fp-d03-002"
SITE2 = "d03/w14/fp-d03-007"
SITE3 = "d01/w02/fp-d01-001"
PASSWORDS = {
    "alice": ("dispatcher", "Alice Adams"),
    "bob": ("dispatcher", "Bob Brown"),
    "sam": ("supervisor", "Sam Supervisor"),
    "vera": ("viewer", "Vera Viewer"),
}


def pw(name: str) -> str:
    return f"{name}-correct-horse"


def seed(store: Store) -> None:
    for name, (role, display) in PASSWORDS.items():
        accounts.add_user(store, name, role, display, pw(name))
    now = now_ms()
    births = {
        SITE: ("Elm Street Primary School", "12 Elm Street", 52.3702, 4.8952, "+31 20 555 0101",
               {"n01/smoke": "kitchen smoke, 2nd floor", "n02/heat": "boiler room heat"}),
        SITE2: ("Harbour Warehouse 7", "Quay 7, East Dock", 52.3791, 4.9180, "+31 20 555 0177",
                {"n03/smoke": "loading bay smoke", "cam/gate": "gate camera"}),
        SITE3: ("Old Town Library", "1 Market Square", 52.3610, 4.8830, "+31 20 555 0142",
                {"n01/smoke": "reading room smoke"}),
    }  # fmt: skip
    for site, (name, address, lat, lon, phone, labels) in births.items():
        store.gateway_state(
            site,
            {
                "online": True,
                "version": "0.1.0",
                "labels": labels,
                "site": {
                    "name": name,
                    "address": address,
                    "latitude": lat,
                    "longitude": lon,
                    "contact_name": "Caretaker",
                    "contact_phone": phone,
                },
            },
            now,
        )
        store.gateway_tele([(site, {"uptime_s": 3600, "outbox": 0, "cpu_temp_c": 48.5}, now)])
    store.upsert_site(
        SITE,
        {
            "access": "Main gate on Elm Street; fire lane behind the gym",
            "key_box": "Red key box left of the main door, code with the caretaker",
            "hazards": "Gas boiler in the basement; chemistry lab 1st floor",
            "notes": "School hours 08:00-16:00: up to 400 children",
        },
        "sam",
    )


def alarm(store: Store, live: LiveState, site: str, source: str = "n01/smoke", *,
          cause: str = "smoke", kind: Kind = Kind.ALARM, received_ms: int | None = None,
          **data: object) -> int:  # fmt: skip
    event = Event(kind, source, {"cause": cause, **data} if kind is not Kind.FAULT else data)
    result = store.ingest([(site, event, received_ms or now_ms())])[0]
    live.changed()
    return result.incident_id


# --- HTTP: auth, CSRF, roles, expiry, workflow ------------------------------------------------
@pytest.fixture
def web(tmp_path):
    store = Store(tmp_path / "console.db")
    seed(store)
    live = LiveState()
    app = create_app(store, live, ConsoleSettings(session_minutes=60))
    with TestClient(app, base_url="http://console.test") as client:
        yield store, live, app, client
    store.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client: TestClient, name: str, password: str | None = None) -> str:
    page = client.get("/login")
    r = client.post(
        "/login",
        data={"username": name, "password": password or pw(name), "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/").text)


def test_login_roles_and_audit(web):
    store, live, app, client = web
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/api/queue").status_code == 401
    assert client.get("/events").status_code == 401
    page = client.get("/login")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # no CSRF token: refused before the password is even looked at
    r = client.post("/login", data={"username": "alice", "password": pw("alice")})
    assert r.status_code == 403
    bad = client.post(
        "/login", data={"username": "alice", "password": "wrong", "csrf": csrf_of(page.text)}
    )
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    token = login(client, "vera")
    actions = [(a["actor"], a["action"]) for a in store.audit_log()]
    assert ("alice", "login_failed") in actions and ("vera", "login") in actions
    incident = alarm(store, live, SITE)
    assert client.get(f"/incident/{incident}").status_code == 200
    assert client.get("/api/queue").json()["queue"][0]["id"] == incident
    # a viewer reads, but takes nothing and sees no workflow buttons
    assert 'id="take"' not in client.get(f"/incident/{incident}").text
    r = client.post(f"/incident/{incident}/take", data={"csrf": token})
    assert r.status_code == 403 and store.incident(incident)["owner"] is None
    assert client.get("/report").status_code == 403
    client.post("/logout", data={"csrf": token})
    assert client.get("/api/queue").status_code == 401
    assert ("vera", "logout") in [(a["actor"], a["action"]) for a in store.audit_log()]
    # a dispatcher works incidents but edits no run card; a supervisor does
    token = login(client, "alice")
    r = client.post(f"/runcard/{SITE}", data={"csrf": token, "hazards": "none"})
    assert r.status_code == 403
    client.post("/logout", data={"csrf": token})
    token = login(client, "sam")
    r = client.post(
        f"/runcard/{SITE}",
        data={"csrf": token, "hazards": "Acetylene store by the gym", "latitude": "52.37"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert store.site(SITE)["hazards"] == "Acetylene store by the gym"
    assert "Acetylene store" in client.get(f"/incident/{incident}").text
    r = client.post(f"/runcard/{SITE}", data={"csrf": token, "latitude": "123"})
    assert r.status_code == 400 and "outside" in r.text
    assert "alice" in client.get("/users").text


def test_csrf_is_checked_on_every_post(web):
    store, live, app, client = web
    token = login(client, "alice")
    incident = alarm(store, live, SITE)
    assert client.post(f"/incident/{incident}/take").status_code == 403
    assert client.post(f"/incident/{incident}/take", data={"csrf": "forged"}).status_code == 403
    assert client.post("/logout").status_code == 403
    assert store.incident(incident)["owner"] is None
    r = client.post(
        f"/incident/{incident}/take", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and store.incident(incident)["owner"] == "alice"


def test_session_ends_with_the_shift(web, monkeypatch):
    store, live, app, client = web
    login(client, "alice")
    assert client.get("/").status_code == 200
    later = now_ms() + 61 * 60_000  # session_minutes=60
    monkeypatch.setattr(console_app, "now_ms", lambda: later)
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert client.get("/api/queue").status_code == 401
    assert ("alice", "session_expired") in [(a["actor"], a["action"]) for a in store.audit_log()]
    assert "session ended" in client.get(r.headers["location"]).text


def test_failed_logins_lock_the_name_for_a_while(web):
    store, live, app, client = web
    for _ in range(console_app.LOCK_AFTER):
        token = csrf_of(client.get("/login").text)
        r = client.post("/login", data={"username": "bob", "password": "nope", "csrf": token})
        assert r.status_code == 401
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"username": "bob", "password": pw("bob"), "csrf": token})
    assert r.status_code == 429


def test_workflow_ownership_and_outcome(web):
    store, live, app, client = web
    incident = alarm(store, live, SITE)
    alarm(store, live, SITE)  # the same site again: grouped, counted
    assert store.incident(incident)["event_count"] == 2
    token = login(client, "alice")
    page = client.get(f"/incident/{incident}").text
    assert "Elm Street Primary School" in page and "kitchen smoke, 2nd floor" in page
    assert 'href="tel:+31205550101"' in page and "Red key box" in page and "2 events" in page
    client.post(f"/incident/{incident}/take", data={"csrf": token})
    client.post("/logout", data={"csrf": token})
    token = login(client, "bob")
    # taking it from a colleague warns first and changes nothing
    r = client.post(f"/incident/{incident}/take", data={"csrf": token})
    assert r.status_code == 409 and "Take over from Alice Adams" in r.text
    assert store.incident(incident)["owner"] == "alice"
    # acting on it without taking it is refused too
    r = client.post(f"/incident/{incident}/dispatch", data={"csrf": token, "note": "x"})
    assert r.status_code == 409 and store.incident(incident)["status"] == "taken"
    r = client.post(f"/incident/{incident}/take", data={"csrf": token, "force": "1"})
    assert store.incident(incident)["owner"] == "bob"
    r = client.post(f"/incident/{incident}/hold", data={"csrf": token, "minutes": "abc"})
    assert r.status_code == 400 and "minutes" in r.text
    client.post(f"/incident/{incident}/dispatch", data={"csrf": token, "note": "engine 12 sent"})
    assert store.incident(incident)["status"] == "dispatched"
    r = client.post(f"/incident/{incident}/resolve", data={"csrf": token, "note": "no outcome"})
    assert r.status_code == 400 and "choose an outcome" in r.text
    assert store.incident(incident)["status"] == "dispatched"
    r = client.post(
        f"/incident/{incident}/resolve",
        data={"csrf": token, "outcome": "unwanted", "note": "toast"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    done = store.incident(incident)
    assert (done["status"], done["outcome"]) == ("resolved", "unwanted")
    assert "bob: engine 12 sent" in done["note"] and done["dispatched_ms"] and done["resolved_ms"]
    trail = [(a["actor"], a["action"]) for a in store.audit_log(incident_id=incident)]
    for step in [("alice", "taken"), ("bob", "taken_over"), ("bob", "dispatched"),
                 ("bob", "resolved")]:  # fmt: skip
        assert step in trail
    assert store.queue() == []


def test_hold_puts_it_back_in_the_queue(web):
    store, live, app, client = web
    incident = alarm(store, live, SITE)
    token = login(client, "alice")
    client.post(f"/incident/{incident}/take", data={"csrf": token})
    client.post(f"/incident/{incident}/hold", data={"csrf": token, "minutes": "0.01"})
    item = client.get("/api/queue").json()["queue"][0]
    assert (item["status"], item["owner"]) == ("held", "alice")
    time.sleep(0.7)
    item = client.get("/api/queue").json()["queue"][0]
    assert (item["status"], item["owner"]) == ("new", None)
    assert "hold_expired" in [a["action"] for a in store.audit_log(incident_id=incident)]


def test_history_csv_snapshot_and_api(web):
    store, live, app, client = web
    alarm(store, live, SITE)
    alarm(store, live, SITE2, "n03/smoke", cause="=HYPERLINK(1)")
    alarm(store, live, SITE3, "n01/smoke", cause="test")
    login(client, "vera")
    page = client.get("/history", params={"district": "d03"}).text
    assert SITE in page and SITE2 in page and SITE3 not in page
    page = client.get("/history", params={"q": "warehouse"}).text  # no match: label not data
    page = client.get("/history", params={"q": "HYPERLINK"}).text
    assert SITE2 in page and SITE not in page.split("<tbody>")[1]
    assert client.get("/history", params={"since": "yesterday"}).status_code == 400
    r = client.get("/history.csv", params={"ward": "w14"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1 and rows[0]["label"] == "loading bay smoke"
    assert rows[0]["data"].startswith("{")  # a formula would start with '='
    r = client.get("/history.csv", params={"q": "test"})
    assert list(csv.DictReader(io.StringIO(r.text)))[0]["test"] == "1"
    # the camera snapshot that ingest keeps in memory, and only that
    assert client.get(f"/snap/{SITE2}/gate").status_code == 404
    app.state.snapshots[(SITE2, "gate")] = (b"\xff\xd8fake-jpeg\xff\xd9", now_ms())
    r = client.get(f"/snap/{SITE2}/gate")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    smoke = alarm(store, live, SITE2, "cam/gate", kind=Kind.SMOKE, cause="smoke")
    assert f'src="/snap/{SITE2}/gate"' in client.get(f"/incident/{smoke}").text
    assert {g["site"] for g in client.get("/api/gateways").json()} == {SITE, SITE2, SITE3}
    assert len(client.get("/api/sites").json()) == 3
    assert client.get("/api/faults").json() == []
    store.quarantine("wg/v1/d03/w12/x/evt/alarm", b"\x99garbage", "not CBOR", now_ms())
    assert "not CBOR" in client.get("/quarantine").text


def test_report_gateway_page_and_headers(web, tmp_path):
    store, live, app, client = web
    quick = alarm(store, live, SITE)
    alarm(store, live, SITE3, cause="test")
    slow = alarm(store, live, SITE2, "n03/smoke", received_ms=now_ms() - 200_000)
    token = login(client, "sam")
    for incident in (quick, slow):
        client.post(f"/incident/{incident}/take", data={"csrf": token})
    page = client.get("/report").text
    # fire: 1 of 2 taken within 90 s; the untaken test alarm is listed but not counted
    assert re.search(r'id="share">50 % <small class="muted">1 of 2 incidents', page), page
    assert '<span class="badge cat-test">TEST</span></td><td>1</td><td>0</td>' in page
    page = client.get(f"/gateway/{SITE}").text
    assert "cpu_temp_c" in page and "48.5" in page and "kitchen smoke, 2nd floor" in page
    assert client.get("/gateway/d9/w9/nope").status_code == 404
    # the map's tile server is the one outside origin the page may load images from
    tiles = create_app(
        store,
        live,
        ConsoleSettings(tile_url="https://{s}.gis.city.example/t/{z}/{x}/{y}.png", https_only=True),
    )
    with TestClient(tiles, base_url="https://console.test") as other:
        r = other.get("/login")
        assert (
            "img-src 'self' data: https://*.gis.city.example;"
            in r.headers["content-security-policy"]
        )
        cookie = r.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_console_on_postgresql(tmp_path):
    """The console's own store calls (text search, users) run on PostgreSQL as on SQLite."""
    from tests.pg import pg_bindir, private_postgres

    if pg_bindir() is None:
        pytest.skip("PostgreSQL server binaries missing: apt-get install postgresql")
    with private_postgres() as url:
        store = Store(url)
        try:
            seed(store)
            live = LiveState()
            incident = alarm(store, live, SITE2, "n03/smoke", cause="smoke", zone="East_Dock%")
            assert [u["username"] for u in store.users()] == ["alice", "bob", "sam", "vera"]
            assert [r["site"] for r in store.history(text="EAST_dock")] == [SITE2]
            assert store.history(text="eas__dock") == []  # "_" is no wildcard
            with TestClient(create_app(store, live, ConsoleSettings())) as client:
                token = login(client, "alice")
                client.post(f"/incident/{incident}/take", data={"csrf": token})
                assert client.get("/api/queue").json()["queue"][0]["owner"] == "alice"
                assert "East_Dock" in client.get("/history.csv", params={"q": "east"}).text
        finally:
            store.close()


# --- the live screens in Chromium -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, stoppable and restartable on the same port (the offline test)."""

    def __init__(self, app, port: int) -> None:
        self.app, self.port = app, port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def live_console(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("console")
    store = Store(tmp / "console.db")
    seed(store)
    live = LiveState()
    live.set_broker(True, "connected to broker.local:8883")
    settings = ConsoleSettings(escalate_after_s=60)
    app = create_app(store, live, settings)
    server = Server(app, _free_port())
    server.start()
    shots = Path(os.environ.get("WARDGATE_CONSOLE_SHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
        )
        yield {
            "store": store,
            "live": live,
            "server": server,
            "url": f"http://127.0.0.1:{server.port}",
            "browser": browser,
            "shots": shots,
            "app": app,
        }
        browser.close()
    server.stop()
    store.close()


def open_page(env, name: str, path: str = "/"):
    context = env["browser"].new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(env["url"] + "/login?next=" + path)
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", pw(name))
    page.click("button:has-text('Log in')")
    page.wait_for_url(env["url"] + path)
    page.wait_for_function("document.body.dataset.revision !== undefined")
    return page


def real_errors(page) -> list[str]:
    """Script errors, not the failed loads of a server that was stopped on purpose."""
    return [
        e
        for e in page.errors
        if "Failed to load resource" not in e and "ERR_CONNECTION_REFUSED" not in e
    ]


def sound_count(page, kind: str = "soundCount") -> int:
    return int(page.evaluate(f"document.body.dataset.{kind}"))


def test_screens_live(live_console):
    env = live_console
    store, live, shots = env["store"], env["live"], env["shots"]
    a = open_page(env, "alice")
    b = open_page(env, "bob")
    login_shot = env["browser"].new_page(viewport={"width": 1600, "height": 900})
    login_shot.goto(env["url"] + "/login")
    login_shot.screenshot(path=str(shots / "login.png"))
    login_shot.close()
    assert a.locator("#queue-empty").is_visible()

    # a fire appears on two open pages within a second, and both sound
    fire = alarm(store, live, SITE)
    t0 = time.monotonic()
    for page in (a, b):
        page.wait_for_selector(f"tr[data-id='{fire}']", timeout=1000)
    assert time.monotonic() - t0 < 1.0
    for page in (a, b):
        page.wait_for_function("document.body.dataset.soundCount === '1'", timeout=3000)
        assert page.evaluate("document.body.dataset.soundLast") == "fire"
    row = a.locator(f"tr[data-id='{fire}']")
    assert "kitchen smoke, 2nd floor" in row.inner_text()
    assert "Elm Street Primary School" in row.inner_text()

    # a test alarm and a fault: marked, and sorted fire, fault, test; a test sounds softly
    test = alarm(store, live, SITE3, cause="test")
    fault = alarm(store, live, SITE2, "n03/smoke", kind=Kind.FAULT, code="silent", active=True)
    a.wait_for_selector(f"tr[data-id='{test}']", timeout=3000)
    a.wait_for_selector(f"tr[data-id='{fault}']", timeout=3000)
    order = a.eval_on_selector_all("#queue-body tr", "rows => rows.map(r => r.dataset.category)")
    assert order == ["fire", "fault", "test"]
    assert a.locator(f"tr[data-id='{test}'] .badge").inner_text() == "TEST"
    a.wait_for_function("document.body.dataset.soundTestCount === '1'", timeout=3000)
    assert sound_count(a) == 1  # the test alarm did not sound the fire tone

    # escalated: nobody took a fire for longer than escalate_after_s
    late = alarm(store, live, SITE2, "n03/smoke", received_ms=now_ms() - 95_000)
    assert [i["id"] for i in store.escalate_due(now_ms(), 60)] == [late]
    live.changed()
    b.wait_for_selector(f"tr[data-id='{late}'].escalated.age-late", timeout=3000)
    assert "ESCALATED" in b.locator(f"tr[data-id='{late}']").inner_text()
    a.wait_for_selector(f"tr[data-id='{fire}'].age-fresh", timeout=3000)
    # a flood from one site is one line with a count, never dropped
    for _ in range(2):
        assert alarm(store, live, SITE2, "n03/smoke") == late
    a.wait_for_selector(f"tr[data-id='{late}'] td.count:has-text('×3')", timeout=3000)
    a.screenshot(path=str(shots / "queue.png"))

    # take on page A: the owner shows on page B
    a.locator(f"tr[data-id='{fire}'] button").click()
    a.wait_for_url(f"{env['url']}/incident/{fire}")
    b.wait_for_function(
        f"document.querySelector(\"tr[data-id='{fire}'] .status\").innerText"
        ".includes('Alice Adams has it')",
        timeout=1000,
    )
    assert "You have it" in a.locator("#owner").inner_text()
    # taking it from a colleague warns; confirming takes it over, and A's page follows
    b.locator(f"tr[data-id='{fire}'] button").click()
    b.wait_for_selector("#conflict", timeout=3000)
    assert "Alice Adams" in b.locator("#conflict").inner_text()
    assert store.incident(fire)["owner"] == "alice"
    b.click("#take-over")
    b.wait_for_selector("#owner:has-text('You have it')")
    a.wait_for_selector("#owner:has-text('Bob Brown has it')", timeout=3000)

    # dispatch and resolve on B: the outcome is required; every step audited
    b.fill("#dispatch-note", "engine 12 and ladder 3 sent")
    b.click("#dispatch")
    b.wait_for_selector(".status-word:has-text('DISPATCHED')")
    b.screenshot(path=str(shots / "incident.png"), full_page=True)
    b.click("#resolve")  # no outcome chosen: the browser refuses to submit (the server too)
    assert b.evaluate("document.querySelector('input[name=outcome]').validity.valueMissing")
    time.sleep(0.3)
    assert store.incident(fire)["status"] == "dispatched"
    b.check("input[name=outcome][value=fire]")
    b.fill("#resolve-note", "kitchen fire, out on arrival")
    b.click("#resolve")
    b.wait_for_selector(".status-word:has-text('RESOLVED')")
    done = store.incident(fire)
    assert (done["status"], done["outcome"], done["owner"]) == ("resolved", "fire", "bob")
    trail = [(x["actor"], x["action"]) for x in store.audit_log(incident_id=fire)]
    assert ("alice", "taken") in trail and ("bob", "taken_over") in trail
    assert ("bob", "dispatched") in trail and ("bob", "resolved") in trail
    a.goto(env["url"] + "/")
    a.wait_for_selector(f"tr[data-id='{late}']")
    assert a.locator(f"tr[data-id='{fire}']").count() == 0

    # broker link down: every screen says so, and since when
    live.set_broker(False, "connection refused by broker.local:8883")
    for page in (a, b):
        page.wait_for_selector("#banner-broker:has-text('Broker disconnected since')", timeout=3000)
    a.screenshot(path=str(shots / "broker-down.png"))
    live.set_broker(True, "connected to broker.local:8883")
    a.wait_for_selector("#banner-broker", state="hidden", timeout=3000)

    # the console itself goes away: the page says it is offline, then recovers and resyncs
    env["server"].stop()
    lost = "#banner-offline:has-text('Connection to console lost since')"
    a.wait_for_selector(lost, timeout=5000)
    assert a.evaluate("document.body.classList.contains('offline')")
    a.screenshot(path=str(shots / "offline.png"))
    missed = alarm(store, live, SITE3, "n01/smoke")  # while the page was offline
    env["server"].start()
    a.wait_for_selector("#banner-offline:has-text('Reconnected')", timeout=8000)
    a.wait_for_selector(f"tr[data-id='{missed}']", timeout=2000)
    assert not a.evaluate("document.body.classList.contains('offline')")
    assert real_errors(a) + real_errors(b) == []


def test_map_and_history_screens(live_console):
    env = live_console
    page = open_page(env, "sam", "/map")
    page.wait_for_function("document.getElementById('map').dataset.markers === '3'", timeout=8000)
    assert page.locator(".leaflet-tooltip.map-label").count() == 3
    assert "Old Town Library" in page.locator("#map").inner_text()
    page.wait_for_timeout(300)
    page.screenshot(path=str(env["shots"] / "map.png"))
    page.goto(env["url"] + "/history?district=d03")
    assert page.locator("#history tbody tr").count() >= 3
    page.screenshot(path=str(env["shots"] / "history.png"))
    page.goto(env["url"] + "/gateways")
    page.screenshot(path=str(env["shots"] / "gateways.png"), full_page=True)
    assert real_errors(page) == []
