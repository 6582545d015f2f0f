"""Fire-brigade receiver (`wardgate alarms`) and the gateway's acknowledgement supervision."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge import config
from edge.runtime import Gateway
from protocol.events import Event, Kind
from tests.conftest import WATCHER_PASSWORD, WATCHER_USER
from tests.harness import REPO, Watcher, gateway_config_text, write_config


class ReceiverProcess:
    """`wardgate alarms --json` as a real process; its JSON lines are collected."""

    def __init__(self, broker, tmp_path: Path, name: str = "rx1", *extra: str) -> None:
        pw = tmp_path / "rx.password"
        pw.write_text(WATCHER_PASSWORD)
        self.audit = tmp_path / f"{name}.audit.jsonl"
        self.args = [
            sys.executable, "-m", "edge.cli", "alarms", "--json",
            "--host", broker.host, "--port", str(broker.port),
            "--username", WATCHER_USER, "--password-file", str(pw),
            "--name", name, "--audit", str(self.audit), *extra,
        ]  # fmt: skip
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def start(self) -> ReceiverProcess:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda r: r["what"] == "connected", what="receiver connected")
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self.lock:
                self.records.append(json.loads(line))

    def matching(self, pred) -> list[dict]:
        with self.lock:
            return [r for r in self.records if pred(r)]

    def wait_for(self, pred, timeout: float = 20, count: int = 1, what: str = "") -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(pred)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        err = self.proc.stderr.read() if self.proc and self.proc.poll() is not None else ""
        raise AssertionError(f"receiver: timed out waiting for {what}; got {self.records} {err}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def make_gateway(tmp_path, broker, ack_extra: str = "") -> Gateway:
    text = gateway_config_text(broker, tmp_path, extra=f"[alarm_ack]\n{ack_extra}\n")
    return Gateway(config.load(write_config(tmp_path, text)))


def is_alarm(event_id: str):
    return lambda r: r["what"] == "alarm" and r["event"]["id"] == event_id


def test_alarm_is_shown_acknowledged_and_the_gateway_sees_the_ack(tmp_path, broker):
    rx = ReceiverProcess(broker, tmp_path).start()
    gw = make_gateway(tmp_path, broker, "timeout_s = 2")
    gw.start()
    try:
        alarm = gw.emit(Kind.ALARM, "n07/smoke", {"cause": "smoke", "value": 82})
        (shown,) = rx.wait_for(is_alarm(alarm.id_hex), what="the alarm")
        assert shown["site"] == "d01/w01/gw-test-1" and shown["event"]["source"] == "n07/smoke"
        deadline = time.monotonic() + 10
        while gw.ack_supervisor.status()["acked"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.ack_supervisor.status()["pending"] == 0
        time.sleep(3)  # past the timeout: an acknowledged alarm raises no transmission fault
        assert gw.ack_supervisor.faults == 0
    finally:
        gw.stop()
        rx.stop()
    audit = [json.loads(line) for line in rx.audit.read_text().splitlines()]
    assert any(r.get("event", {}).get("id") == alarm.id_hex for r in audit)


def test_unacknowledged_alarm_raises_transmission_fault_then_clears(tmp_path, broker):
    lamp = tmp_path / "lamp"
    lamp.write_text("0\n")
    watcher = Watcher(broker, client_id="fault-watcher")
    rx = ReceiverProcess(broker, tmp_path).start()  # creates its persistent session
    rx.stop()  # the receiving centre goes away
    gw = make_gateway(tmp_path, broker, f'timeout_s = 1\noutput = "{lamp}"')
    gw.start()
    try:
        alarm = gw.emit(Kind.ALARM, "n02/heat", {"cause": "heat", "value": 61.5})
        watcher.wait_for(
            lambda: any(
                e.data.get("code") == "alarm_unacknowledged" and e.data["active"]
                for e in watcher.events("fault")
            ),
            what="transmission fault",
        )
        deadline = time.monotonic() + 5
        while lamp.read_text().strip() != "1" and time.monotonic() < deadline:
            time.sleep(0.05)  # a regular file (unlike sysfs) can be read mid-write
        assert lamp.read_text().strip() == "1"
        # the receiver returns: its session held the alarm; it acks; the fault clears
        rx = ReceiverProcess(broker, tmp_path).start()
        rx.wait_for(is_alarm(alarm.id_hex), what="the queued alarm")
        watcher.wait_for(
            lambda: any(
                e.data.get("code") == "alarm_unacknowledged" and not e.data["active"]
                for e in watcher.events("fault")
            ),
            what="fault cleared",
        )
        deadline = time.monotonic() + 5
        while lamp.read_text().strip() != "0" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lamp.read_text().strip() == "0"
    finally:
        gw.stop()
        rx.stop()
        watcher.stop()


def test_duplicates_are_shown_once_but_acked_again_and_survive_receiver_restart(tmp_path, broker):
    watcher = Watcher(broker, client_id="injector")
    acks = Watcher(broker, topic="wg/v1/d01/w01/gw-test-1/ack", client_id="ack-watcher")
    rx = ReceiverProcess(broker, tmp_path).start()
    try:
        alarm = Event(Kind.ALARM, "n01/flame", {"cause": "flame"}, gateway="gw-test-1", seq=1)
        topic = "wg/v1/d01/w01/gw-test-1/evt/alarm"
        for _ in range(3):
            watcher.publish(topic, alarm.to_cbor())
        acks.wait_for(lambda: len(acks.messages) >= 3, what="three acks")
        assert json.loads(acks.messages[0].payload)["id"] == alarm.id_hex
        time.sleep(0.3)
        assert len(rx.matching(is_alarm(alarm.id_hex))) == 1
        rx.stop()
        rx = ReceiverProcess(broker, tmp_path).start()  # remembers what its audit log holds
        watcher.publish(topic, alarm.to_cbor())
        watcher.publish(topic, b"\x00 not an event")
        rx.wait_for(lambda r: r["what"] == "undecodable", what="the garbage report")
        assert rx.matching(is_alarm(alarm.id_hex)) == []
    finally:
        rx.stop()
        watcher.stop()
        acks.stop()


def test_receiver_survives_broker_restart_and_tracks_gateway_liveness(tmp_path, broker):
    rx = ReceiverProcess(broker, tmp_path).start()
    gw = make_gateway(tmp_path, broker)
    gw.start()
    try:
        rx.wait_for(lambda r: r["what"] == "gateway_online", what="gateway online")
        broker.restart()
        rx.wait_for(lambda r: r["what"] == "connected", count=2, timeout=30, what="reconnect")
        alarm = gw.emit(Kind.ALARM, "n03/call", {"cause": "manual"})
        rx.wait_for(is_alarm(alarm.id_hex), timeout=30, what="alarm after the restart")
    finally:
        gw.stop()
    rx.wait_for(lambda r: r["what"] == "gateway_offline", what="gateway offline")
    rx.stop()


def test_silent_gateway_is_flagged_within_the_supervision_time(tmp_path, broker):
    rx = ReceiverProcess(broker, tmp_path, "rx1", "--supervision-s", "2").start()
    try:
        w = Watcher(broker, client_id="fake-gw")
        w.publish("wg/v1/d09/w01/gw-x/state", b'{"online": true}')
        rx.wait_for(lambda r: r["what"] == "gateway_online", what="online")
        rx.wait_for(lambda r: r["what"] == "gateway_silent", timeout=6, what="silent")
        w.stop()
    finally:
        rx.stop()


def test_shared_subscription_splits_alarms_between_receivers(tmp_path, broker):
    a = ReceiverProcess(broker, tmp_path, "rx-a").start()
    b = ReceiverProcess(broker, tmp_path, "rx-b").start()
    gw = make_gateway(tmp_path, broker)
    gw.start()
    try:
        ids = {gw.emit(Kind.ALARM, "n01/smoke", {"i": i}).id_hex for i in range(30)}

        def got(rx):
            return {r["event"]["id"] for r in rx.matching(lambda r: r["what"] == "alarm")}

        deadline = time.monotonic() + 20
        while got(a) | got(b) != ids and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got(a) | got(b) == ids
        assert not got(a) & got(b)  # each alarm went to one member of the group
        assert got(a) and got(b)
    finally:
        gw.stop()
        a.stop()
        b.stop()


@pytest.fixture
def webhook_server():
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alarms", received
    server.shutdown()


def test_alarms_are_forwarded_to_a_webhook(tmp_path, broker, webhook_server):
    url, received = webhook_server
    rx = ReceiverProcess(broker, tmp_path, "rx1", "--webhook", url).start()
    gw = make_gateway(tmp_path, broker)
    gw.start()
    try:
        alarm = gw.emit(Kind.ALARM, "n05/smoke", {"cause": "smoke"})
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and received[0]["event"]["id"] == alarm.id_hex
    finally:
        gw.stop()
        rx.stop()


def test_a_retained_alarm_is_not_replayed_as_a_fire(broker, tmp_path):
    """Mosquitto 2.0 cannot refuse a retained publish on evt/alarm; the receiver drops it."""
    retained = Event(Kind.ALARM, "n01/smoke", {"cause": "smoke"}, gateway="gw-test-1", seq=1)
    live = Event(Kind.ALARM, "n02/smoke", {"cause": "smoke"}, gateway="gw-test-1", seq=2)
    topic = "wg/v1/d01/w01/gw-test-1/evt/alarm"
    publisher = Watcher(broker, client_id="retainer", topic="none/#")
    try:
        publisher.client.publish(topic, retained.encode(), qos=1, retain=True).wait_for_publish(5)
        rx = ReceiverProcess(broker, tmp_path).start()
        try:
            publisher.publish(topic, live.encode())
            rx.wait_for(is_alarm(live.id_hex), what="the live alarm")
            time.sleep(0.5)
            assert not rx.matching(is_alarm(retained.id_hex)), "a retained alarm was shown"
        finally:
            rx.stop()
    finally:
        publisher.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        publisher.stop()
