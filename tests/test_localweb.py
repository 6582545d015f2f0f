"""The technician's page on a real `wardgate run`: MicroPython node on a pty, real Mosquitto, a
real central ingest that acknowledges alarms, headless Chromium (the system's)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.unix_node import UnixNode
from edge import config
from edge.confbase import ConfigError
from edge.localweb.auth import hash_password, verify_password
from tests.central_support import CHROMIUM, CHROMIUM_ARGS, CentralProcess
from tests.harness import REPO, GatewayProcess, gateway_config_text, write_config
from tests.test_serial_nodes import NODE

PASSWORD = "commission-me-42"
#: screenshots go to a temporary folder unless WARDGATE_LOCALWEB_SHOTS names one (docs/localweb
#: to renew the committed ones): a test run never rewrites tracked files
SHOTS_ENV = "WARDGATE_LOCALWEB_SHOTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localweb_section(bind: str, port: int, **extra: str) -> str:
    lines = [f"{k} = {v}" for k, v in extra.items()]
    return (
        f'[localweb]\nenabled = true\nbind = "{bind}"\nport = {port}\n'
        f'password_hash = "{hash_password(PASSWORD, iterations=20_000)}"\n' + "\n".join(lines)
    )


def test_password_hash_round_trip_and_refusal():
    stored = hash_password(PASSWORD, iterations=10_000)
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "x", stored)
    assert not verify_password(PASSWORD, "plain-text")


@pytest.mark.parametrize("bind", ["8.8.8.8", "0.0.0.0", "2001:4860::8888", "gateway.local"])
def test_a_non_lan_bind_is_refused(tmp_path, broker, bind):
    text = gateway_config_text(broker, tmp_path, extra=localweb_section(bind, 8080))
    with pytest.raises(ConfigError) as err:
        config.load(write_config(tmp_path, text))
    problem = "\n".join(err.value.problems)
    assert "localweb" in problem and ("not a LAN address" in problem or "not an IP" in problem)
    # forced (a lab, never a deployment): accepted
    if bind != "gateway.local":
        text = gateway_config_text(
            broker, tmp_path, extra=localweb_section(bind, 8080, allow_public_bind="true")
        )
        assert config.load(write_config(tmp_path, text)).localweb.allow_public_bind


def test_bind_lan_answers_lan_clients_only(tmp_path, broker):
    """`bind = "lan"` (what enrollment writes: a DHCP gateway's address is not known) listens
    on every address and answers only clients on private, link-local or loopback addresses. A
    real client from a public address (1.2.3.4 on the loopback interface for a moment: root)
    gets 403."""
    if os.geteuid() != 0:
        pytest.skip("adding an address to lo needs root (CI runs as root)")
    port = free_port()
    path = write_config(
        tmp_path, gateway_config_text(broker, tmp_path, extra=localweb_section("lan", port))
    )
    subprocess.run(["ip", "addr", "add", "1.2.3.4/32", "dev", "lo"], check=True)
    gw = None
    try:
        gw = GatewayProcess(path).start()
        assert _get_login(port).startswith(b"HTTP/1.0 200")  # from the loopback: the LAN
        assert _get_login(port, source="1.2.3.4").startswith(b"HTTP/1.0 403")
    finally:
        if gw is not None:
            gw.terminate()
        subprocess.run(["ip", "addr", "del", "1.2.3.4/32", "dev", "lo"], check=False)


def _get_login(port: int, source: str | None = None, timeout: float = 15) -> bytes:
    """The first bytes of the answer to GET /login, once the page listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(
                ("127.0.0.1", port), timeout=2, source_address=(source, 0) if source else None
            ) as s:
                s.sendall(b"GET /login HTTP/1.0\r\n\r\n")
                return s.recv(64)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_page_off_loads_no_http_code(tmp_path, broker):
    path = str(write_config(tmp_path, gateway_config_text(broker, tmp_path)))
    code = (
        "import sys; from edge import config; from edge.runtime import Gateway;"
        f"gw = Gateway(config.load({path!r}));"
        "gw.start(); gw.stop(0);"
        "bad = [m for m in sys.modules if m.startswith(('edge.localweb', 'http.server'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_technician_page_end_to_end(tmp_path, broker):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    extra = f"""
[alarm_ack]
timeout_s = 20

[serial.readings]
min_interval_s = 0.2

[[serial.ports]]
name = "nodes1"
path = "{link}"
protocol = "node"
nodes = [7]
labels = {{ "n07/smoke" = "hall, ground floor" }}

{localweb_section("127.0.0.1", port)}
"""
    path = write_config(tmp_path, gateway_config_text(broker, tmp_path, extra=extra))
    rx = CentralProcess(broker, tmp_path).start()
    url = f"http://127.0.0.1:{port}"
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with UnixNode(NODE, link=link) as node:
        gw = GatewayProcess(path).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1000, "height": 700})
                deadline = time.monotonic() + 20
                while True:
                    try:
                        page.goto(url + "/login")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise AssertionError(gw.log()) from None
                        time.sleep(0.2)
                # a wrong password is refused
                page.fill("input[name=password]", "wrong-password")
                page.click("text=Log in >> nth=-1")
                expect(page.locator("#error")).to_have_text("Wrong password.")
                assert page.url.endswith("/login?failed=1")
                # an API call without a session is refused too
                assert page.request.get(url + "/api/sensors").status == 401
                page.fill("input[name=password]", PASSWORD)
                page.click("text=Log in >> nth=-1")
                expect(page.locator("#overall")).to_contain_text("green", timeout=10_000)
                expect(page.locator("#rows")).to_contain_text("pipeline serial-nodes1")
                expect(page.locator("#rows")).to_contain_text("without TLS")  # red: not mTLS
                page.screenshot(path=str(shots / "selftest.png"), full_page=True)
                # a POST without the CSRF token is refused
                assert page.request.post(url + "/api/test-alarm").status == 403
                # the smoke value follows the node
                page.goto(url + "/sensors")
                smoke = page.locator("tr[data-source='n07/smoke'] td.value")
                node.set_smoke("smoke", 3.0)
                expect(smoke).to_have_text("3 %", timeout=10_000)
                expect(page.locator("tr[data-source='n07/smoke']")).to_contain_text(
                    "hall, ground floor"
                )
                node.set_smoke("smoke", 7.5)
                expect(smoke).to_have_text("7.5 %", timeout=10_000)
                page.screenshot(path=str(shots / "sensors.png"), full_page=True)
                # the sounder test and the alarm reset reach the node itself
                edges = len(node.edges)
                page.click("text=Sounder test / silence")
                expect(page.locator("#result")).to_contain_text("sensor_silence", timeout=5000)
                node.wait_edge("silence", timeout=10, after=edges)
                page.click("text=Reset latched alarms")
                expect(page.locator("#result")).to_contain_text("sensor_reset", timeout=5000)
                node.wait_edge("reset", timeout=10, after=edges)
                # one button: committed, sent, acknowledged by the central receiver
                page.goto(url + "/alarm")
                t0 = time.monotonic()
                page.click("#raise")
                expect(page.locator("#acked")).to_contain_text("round trip", timeout=20_000)
                button_to_ack_s = time.monotonic() - t0
                text = page.locator("#acked").inner_text()
                rtt = float(re.search(r"round trip ([0-9.]+) ms", text).group(1))
                expect(page.locator("#sent")).to_contain_text("PUBACK")
                page.screenshot(path=str(shots / "test-alarm.png"), full_page=True)
                print(f"\ntest alarm: button -> acknowledged {button_to_ack_s * 1000:.0f} ms "
                      f"(browser), committed -> acked {rtt:.1f} ms (gateway)")  # fmt: skip
                assert 0 < rtt < 20_000
                browser.close()
            # the receiver got the test alarm; every page action was reported upstream
            assert any("localweb/test" in line for line in rx.lines) or rx.store.queue()
            log = gw.log()
            assert "technician page: login from 127.0.0.1: refused" in log
            assert "technician page: login from 127.0.0.1: ok" in log
            assert "technician page: test-alarm from 127.0.0.1: ok" in log
        finally:
            gw.terminate()
            rx.stop()
