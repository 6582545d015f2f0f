"""The whole alarm chain with real parts, watched in the dispatchers' browsers (issue 9).

inventory -> `wardgate provision` (broker files, ACL, the gateway's bundle with [site] and labels)
-> private Mosquitto on those files -> MicroPython node on a pty -> gateway (the bundle's config,
mutual TLS) -> `wardgate central run` (account rx-d03, console on a free port, escalation 5 s,
webhook) -> two dispatchers in headless Chromium (Debian's /usr/bin/chromium via Playwright).

One test, in the order a shift would meet it: a smoke alarm on both screens with the sound, the
site card from the gateway's birth, the gateway's transport ack; take on A, owner on B; dispatch
and resolve, audited; a second fire nobody takes escalates on screen and by webhook; an
operator's `wardgate cmd ... test-alarm` is marked TEST and sorted after the fire; a poison
message with the gateway's own certificate is quarantined and the next alarm still arrives; the
broker restarts: the banner comes and goes, and an alarm after the restart arrives.

Screenshots go to $WARDGATE_CONSOLE_SHOTS when set (docs/console/e2e-*.png are made that way).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cbor2
import pytest

from devtools.devbroker import wait_for_port
from devtools.unix_node import UnixNode
from edge import config as gw_config
from protocol.events import Event, Kind
from tests.central_support import CHROMIUM, CHROMIUM_ARGS, CentralProcess
from tests.harness import REPO
from tests.test_provision_support import Peer, bundle_file, fleet_broker, make_fleet, run
from tests.test_serial_nodes import NODE

GATEWAY = "fp-d03-002"
SITE = f"d03/w12/{GATEWAY}"
SITE_NAME = "Elm Street Primary School"
LABELS = {
    "n07/smoke": "kitchen smoke, 2nd floor",
    "n07/heat": "boiler room heat",
    "n07/flame": "gym flame detector",
    "n07/mcp": "call point main entrance",
}
DISPATCHERS = {"alice": "Alice Adams", "bob": "Bob Brown"}
ESCALATE_S = 5  # the config's minimum
#: a per-person operator of the district (fleet.toml), for `wardgate cmd`
OPERATOR = '\n[[accounts.operator]]\nname = "anna.k"\ndistricts = ["d03"]\n'


def inventory() -> str:
    rows = [
        ["id", "district", "ward", "site_type", "hw_serial", "cameras", "sensors", "network",
         "site_name", "address", "latitude", "longitude", "contact_name", "contact_phone",
         "access", "labels"],
        [GATEWAY, "d03", "w12", "fire_point", "10000000000000e2", "",
         "usb-wardgate-node07=node 7", "dhcp", SITE_NAME, "12 Elm Street", "52.3702", "4.8952",
         "Caretaker J. de Vries", "+31 20 555 0101", "Red key box left of the main door",
         "; ".join(f"{k}={v}" for k, v in LABELS.items())],
    ]  # fmt: skip
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


class Hook(BaseHTTPRequestHandler):
    """The city's paging system: records every JSON record the webhook posts."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def gateway_config(fleet, broker, workdir: Path, node_link: Path) -> gw_config.Config:
    """The bundle's own config.toml (with its [site] and labels from the inventory), pointed at
    this broker, this folder and the node's pty."""
    etc = bundle_file(fleet, GATEWAY, "config.toml").parent
    data = tomllib.loads((etc / "config.toml").read_text())
    assert data["site"]["name"] == SITE_NAME and data["serial"]["ports"][0]["labels"] == LABELS
    data["uplink"].update(
        host="127.0.0.1",
        port=broker.cert_port,
        password_file=str(etc / "mqtt.password"),
        keepalive_s=5,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        tls={"ca": str(etc / "tls/ca.crt"), "cert": str(etc / "tls/gateway.crt"),
             "key": str(etc / "tls/gateway.key")},
    )  # fmt: skip
    data["outbox"] = {"path": str(workdir / "outbox.sqlite3")}
    data["health"] = {"heartbeat_s": 5}
    data["alarm_ack"] = {"timeout_s": 5}
    data["serial"]["ports"][0]["path"] = str(node_link)
    return gw_config.from_dict(data, etc / "config.toml")


def central_toml(fleet, broker, workdir: Path, hook_port: int) -> Path:
    accounts = fleet.accounts_dir
    path = workdir / "central.toml"
    path.write_text(
        f"""
[broker]
host = "127.0.0.1"
port = {broker.password_port}
username = "rx-d03"
password_file = "{accounts / "rx-d03.password"}"
ca = "{fleet.ca_dir / "ca.crt"}"
districts = ["d03"]
client_id = "rx-d03"
keepalive_s = 5

[store]
url = "sqlite:///{workdir / "central.db"}"

[console]
title = "Fire brigade d03"

[alarms]
escalate_after_s = {ESCALATE_S}
supervision_s = 30

[webhook]
url = "http://127.0.0.1:{hook_port}/page"
timeout_s = 2
"""
    )
    return path


def add_dispatchers(config: Path, workdir: Path) -> None:
    """`wardgate central user add NAME --password-file` for both, as an administrator would."""
    procs = []
    for name, display in DISPATCHERS.items():
        pw = workdir / f"{name}.pw"
        pw.write_text(password(name) + "\n")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "central",
                    "user",
                    "add",
                    name,
                    "--role",
                    "dispatcher",
                    "--display-name",
                    display,
                    "--password-file",
                    str(pw),
                    "--config",
                    str(config),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    for p in procs:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out


def password(name: str) -> str:
    return f"{name}-correct-horse-battery"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from edge.runtime import Gateway

    tmp = tmp_path_factory.mktemp("e2e")
    fleet = make_fleet(tmp / "fleet", inventory(), OPERATOR, legacy_ops=False)
    run(fleet)
    Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    shots = Path(os.environ.get("WARDGATE_CONSOLE_SHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.callback(hook.shutdown)
        broker = stack.enter_context(fleet_broker(fleet, tmp / "broker"))
        config = central_toml(fleet, broker, tmp, hook.server_address[1])
        add_dispatchers(config, tmp)
        central = CentralProcess(broker, tmp, "central", console=True, config=config)
        stack.callback(central.kill)  # only if the orderly stop below was not reached
        central.start()
        (tmp / "node").mkdir()
        node = UnixNode(NODE, link=tmp / "by-id" / "usb-wardgate-node07", workdir=tmp / "node")
        stack.callback(node.close)
        node.plug()
        gw = Gateway(gateway_config(fleet, broker, tmp, node.link))
        stack.callback(gw.stop)
        gw.start()
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        yield {
            "fleet": fleet, "broker": broker, "central": central, "node": node, "gw": gw,
            "browser": browser, "url": central.console_url(), "shots": shots, "tmp": tmp,
        }  # fmt: skip
        code = central.stop()  # then, from the stack: browser, gateway, node, broker
        assert code == 0, central.output()[-3000:]


def open_screen(env, name: str):
    context = env["browser"].new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(env["url"] + "login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password(name))
    page.click("button:has-text('Log in')")
    page.wait_for_url(env["url"])
    page.wait_for_function("document.body.dataset.revision !== undefined")
    return page


def sounds(page, kind: str = "soundCount") -> int:
    return int(page.evaluate(f"document.body.dataset.{kind} || '0'"))


def open_incident(store, category: str, source: str | None = None) -> dict:
    for item in store.queue():
        if item["category"] == category and (source is None or item["source"] == source):
            return item
    return {}


def test_alarm_chain_end_to_end(chain):
    env = chain
    central, gw, node, broker = env["central"], env["gw"], env["node"], env["broker"]
    store, url, shots = central.store, env["url"], env["shots"]
    t_start = time.monotonic()

    # the gateway's birth reached the operations center with its site and labels
    until(lambda: (store.gateway(SITE) or {}).get("name") == SITE_NAME, 20, "the gateway's birth")
    a = open_screen(env, "alice")
    b = open_screen(env, "bob")
    assert a.locator("#queue-empty").is_visible()
    # the ageing colours follow the short escalation time: amber from half of it
    legend = a.eval_on_selector_all(".legend span", "spans => spans.map(s => s.innerText)")
    assert legend == ["< 2.5 s", "< 5 s", "≥ 5 s: escalated"], legend
    a.wait_for_selector("#broker-pill:has-text('broker connected')", timeout=5000)

    # 1. smoke at the node: a fire on both screens, both sounding, with the site and the label
    node.set_smoke("smoke", 70.0)
    node.wait_edge("alarm smoke", timeout=10)
    fire = until(lambda: open_incident(store, "fire"), 10, "the smoke alarm stored")
    for page in (a, b):
        page.wait_for_selector(f"tr[data-id='{fire['id']}']", timeout=5000)
        page.wait_for_function("document.body.dataset.soundCount === '1'", timeout=5000)
        assert page.evaluate("document.body.dataset.soundLast") == "fire"
        row = page.locator(f"tr[data-id='{fire['id']}']").inner_text()
        assert SITE_NAME in row and LABELS["n07/smoke"] in row and "d03 / w12" in row
    # the gateway holds the operations center's transport ack for it
    until(lambda: gw.ack_supervisor.status()["acked"] >= 1, 10, "the gateway's alarm ack")
    assert gw.ack_supervisor.status()["pending"] == 0

    # 2. take on A: B sees who has it; A dispatches and resolves with an outcome
    a.locator(f"tr[data-id='{fire['id']}'] button").click()
    a.wait_for_url(f"{url}incident/{fire['id']}")
    b.wait_for_selector(
        f"tr[data-id='{fire['id']}'] .status:has-text('Alice Adams has it')", timeout=3000
    )
    assert "You have it" in a.locator("#owner").inner_text()
    card = a.locator("#sitecard").inner_text()
    assert SITE_NAME in card and "12 Elm Street" in card and "+31 20 555 0101" in card
    assert LABELS["n07/smoke"] in card and "online" in card
    assert a.locator("#site-name").inner_text() == SITE_NAME
    a.fill("#dispatch-note", "engine 12 sent")
    a.click("#dispatch")
    a.wait_for_selector(".status-word:has-text('DISPATCHED')")
    b.wait_for_selector(f"tr[data-id='{fire['id']}'] .status:has-text('DISPATCHED')")
    a.screenshot(path=str(shots / "e2e-incident.png"), full_page=True)
    a.check("input[name=outcome][value=fire]")
    a.fill("#resolve-note", "kitchen fire, out on arrival")
    a.click("#resolve")
    a.wait_for_selector(".status-word:has-text('RESOLVED')")
    b.wait_for_selector(f"tr[data-id='{fire['id']}']", state="detached", timeout=3000)
    done = store.incident(fire["id"])
    assert (done["status"], done["outcome"], done["owner"]) == ("resolved", "fire", "alice")
    trail = [(x["actor"], x["action"]) for x in reversed(store.audit_log(incident_id=fire["id"]))]
    assert [x for x in trail if x[0] == "alice"] == [
        ("alice", "taken"), ("alice", "dispatched"), ("alice", "resolved")
    ]  # fmt: skip
    a.goto(url)

    # 3. heat at the node, and nobody takes it: it escalates on screen, and the webhook fires
    node.set_temperature("heat", 70.0)
    second = until(lambda: open_incident(store, "fire"), 10, "the heat alarm stored")
    assert second["id"] != fire["id"] and second["source"] == "n07/heat"
    # waiting, it turns amber at half the escalation time (2.5 s), before it escalates
    b.wait_for_selector(f"tr[data-id='{second['id']}'].age-warn", timeout=ESCALATE_S * 1000)
    # meanwhile an operator sends the gateway a test alarm with `wardgate cmd`
    fleet = env["fleet"]
    cmd = subprocess.run(
        [sys.executable, "-m", "edge.cli", "cmd", GATEWAY, "test-alarm", "--host", "127.0.0.1",
         "--port", str(broker.password_port), "--ca", str(fleet.ca_dir / "ca.crt"),
         "--username", "anna.k", "--password-file", str(fleet.accounts_dir / "anna.k.password"),
         "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cmd.returncode == 0, cmd.stdout + cmd.stderr
    test = until(lambda: open_incident(store, "test"), 10, "the test alarm stored")
    for page in (a, b):
        page.wait_for_selector(f"tr[data-id='{test['id']}']", timeout=5000)
        order = page.eval_on_selector_all(
            "#queue-body tr", "rows => rows.map(r => r.dataset.category)"
        )
        assert order == ["fire", "test"], order
        assert page.locator(f"tr[data-id='{test['id']}'] .badge").inner_text() == "TEST"
        page.wait_for_function("document.body.dataset.soundTestCount >= '1'", timeout=5000)
    # the heat alarm sounded the fire tone again (A's count restarted with its page load)
    assert sounds(b) >= 2 and sounds(a) >= 1
    for page in (a, b):
        page.wait_for_selector(
            f"tr[data-id='{second['id']}'].escalated:has-text('ESCALATED')",
            timeout=(ESCALATE_S + 5) * 1000,
        )
    escalation = until(
        lambda: [r for r in Hook.received if r["what"] == "escalation"], 5, "the webhook"
    )
    # (the first fire may have escalated too on a slow machine, before Alice took it; the test
    # alarm never does)
    escalated = {r["id"]: (r["site"], r["after_s"]) for r in escalation}
    assert escalated[second["id"]] == (SITE, ESCALATE_S) and set(escalated) <= {
        fire["id"],
        second["id"],
    }
    assert {(r["what"], r["incident_id"]) for r in Hook.received if r["what"] == "incident"} >= {
        ("incident", fire["id"]),
        ("incident", second["id"]),
    }

    # 4. poison: severity 99 on the gateway's own evt/alarm, with the gateway's own certificate
    good = cbor2.loads(Event(Kind.ALARM, "n07/smoke", {"cause": "smoke"}).to_cbor())
    poisoner = Peer(fleet, broker.cert_port, gateway=GATEWAY)
    try:
        assert poisoner.connect(), poisoner.connect_reason
        poisoner.publish(f"wg/v1/{SITE}/evt/alarm", cbor2.dumps(good | {"p": 99}))
    finally:
        poisoner.close()
    until(lambda: store.quarantined()[0] == 1, 10, "the poison quarantined")
    a.wait_for_selector("#nav-quarantine:has-text('1')", timeout=3000)
    until(lambda: gw.uplink.connected, 10, "the gateway back on its connection")
    node.press("flame")
    until(lambda: store.incident(second["id"])["event_count"] == 2, 10, "the flame alarm")
    b.wait_for_selector(f"tr[data-id='{second['id']}'] td.count:has-text('×2')", timeout=3000)
    quarantine = b.context.new_page()
    quarantine.goto(url + "quarantine")
    assert "99" in quarantine.locator("#quarantine").inner_text()
    assert quarantine.locator("#quarantine-total").inner_text() == "1"
    quarantine.close()

    # 5. the broker restarts on the same port: every screen says it was down, then that it is back
    broker.stop()
    for page in (a, b):
        page.wait_for_selector(
            "#banner-broker:has-text('Broker disconnected since')", timeout=10_000
        )
    # in words a dispatcher can act on (not paho's "Unspecified error" for a lost connection)
    assert "connection lost (the broker stopped" in a.locator("#banner-broker").inner_text()
    a.screenshot(path=str(shots / "e2e-broker-down.png"))
    broker.start()
    for port in (broker.cert_port, broker.password_port):
        wait_for_port(port, 10)
    for page in (a, b):
        page.wait_for_selector("#banner-broker", state="hidden", timeout=20_000)
        page.wait_for_selector("#broker-pill:has-text('broker connected')", timeout=3000)
    until(lambda: gw.uplink.connected, 20, "the gateway reconnected")
    node.press("mcp")
    until(lambda: store.incident(second["id"])["event_count"] == 3, 15, "the call point alarm")
    for page in (a, b):
        page.wait_for_selector(
            f"tr[data-id='{second['id']}'] td.count:has-text('×3')", timeout=3000
        )
    # a grouped line names every sensor in it, not only the first
    more = a.locator(f"tr[data-id='{second['id']}'] .more").inner_text()
    assert LABELS["n07/flame"] in more and LABELS["n07/mcp"] in more, more
    # a test alarm waits without the ageing colours of a fire (it never escalates)
    test_row = a.locator(f"tr[data-id='{test['id']}']")
    assert "age-" not in (test_row.get_attribute("class") or "")
    # a wire cut at the node's heat detector: a line fault, listed between fire and test
    node.open_line("heat")
    fault = until(lambda: open_incident(store, "fault"), 10, "the line fault")
    for page in (a, b):
        page.wait_for_selector(f"tr[data-id='{fault['id']}']", timeout=3000)
    order = a.eval_on_selector_all("#queue-body tr", "rows => rows.map(r => r.dataset.category)")
    assert order == ["fire", "fault", "test"], order
    a.wait_for_timeout(300)
    a.screenshot(path=str(shots / "e2e-queue.png"))
    sources = {e["source"] for e in central.events("alarm")}
    assert set(LABELS) | {"test"} <= sources, sources

    # every alarm acknowledged to the gateway in time: no transmission fault, nothing pending
    until(lambda: gw.ack_supervisor.status()["pending"] == 0, 10, "every alarm acknowledged")
    status = gw.ack_supervisor.status()
    assert status["acked"] >= 5 and status["faults"] == 0, status
    assert not [e for e in central.events("fault") if e["source"] == "uplink/ack"]
    assert [e for e in a.errors + b.errors if "Failed to load" not in e] == []
    print(f"end-to-end chain: {time.monotonic() - t_start:.1f} s after the broker was up")
