"""The operations center's ingest (`wardgate central run`): real Mosquitto, real gateways, a real
full filesystem. Nothing a gateway sends stops it; an alarm is acknowledged only once stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import cbor2
import pytest

from central.config import CentralConfig
from central.ingest import Ingest, IngestOptions
from central.live import LiveState
from central.store import Store
from edge import config
from edge.runtime import Gateway
from protocol import mqtt as policy
from protocol.events import Event, Kind
from tests.central_support import CentralProcess, central_config
from tests.conftest import WATCHER_PASSWORD, WATCHER_USER
from tests.harness import REPO, Watcher, gateway_config_text, write_config
from tests.test_outbox_disk import fill, mount_tmpfs

BASE = "wg/v1/d01/w01/gw-test-1"


def make_gateway(tmp_path, broker, ack_extra: str = "", heartbeat_s: float = 60) -> Gateway:
    text = gateway_config_text(
        broker, tmp_path, extra=f"[alarm_ack]\n{ack_extra}\n", heartbeat_s=heartbeat_s
    )
    return Gateway(config.load(write_config(tmp_path, text)))


def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def poison_payloads() -> list[tuple[str, bytes]]:
    """What silenced the old receiver (severity 99, a time of inf), and worse."""
    good = Event(Kind.ALARM, "n01/smoke", {"cause": "smoke"}).to_cbor()
    sev99 = cbor2.loads(good) | {"p": 99}
    inf_time = cbor2.loads(good) | {"t": float("inf")}
    return [
        (f"{BASE}/evt/alarm", cbor2.dumps(sev99)),
        (f"{BASE}/evt/alarm", cbor2.dumps(inf_time)),
        (f"{BASE}/evt/alarm", b"\x81" * 50_000 + b"\x00"),  # 50,000 nested arrays
        (f"{BASE}/evt/alarm", b"\xff\xfe garbage"),
        (f"{BASE}/evt/fault", b'{"kind": "fault", "id": "zz"}'),
        (f"{BASE}/evt/smoke", good),  # an alarm on the smoke topic
        (f"{BASE}/state", b"\x00not json"),
    ]


def test_alarm_is_stored_then_acknowledged_and_poison_is_quarantined(tmp_path, broker):
    central = CentralProcess(broker, tmp_path).start()
    gw = make_gateway(tmp_path, broker, "timeout_s = 2")
    gw.start()
    watcher = Watcher(broker, client_id="poisoner", topic="wg/v1/none/#")
    try:
        for topic, payload in poison_payloads():
            watcher.client.publish(topic, payload, qos=1).wait_for_publish(5)
        _until(lambda: central.store.quarantined()[0] >= len(poison_payloads()), 20, "quarantine")
        # the service is still there, and the next alarm goes through
        alarm = gw.emit(Kind.ALARM, "n07/smoke", {"cause": "smoke", "value": 82})
        stored = central.wait_event(alarm.id_hex)
        assert stored["site"] == "d01/w01/gw-test-1" and stored["source"] == "n07/smoke"
        _until(lambda: gw.ack_supervisor.status()["acked"] >= 1, 10, "the gateway sees the ack")
        assert gw.ack_supervisor.status()["pending"] == 0
        [incident] = [i for i in central.store.queue() if i["category"] == "fire"]
        assert incident["source"] == "n07/smoke" and incident["status"] == "new"
        total, rows = central.store.quarantined()
        reasons = " | ".join(r["reason"] for r in rows)
        assert total == len(poison_payloads()), reasons
        assert "severity" in reasons and "time_ms" in reasons and "state" in reasons
        assert "an event of kind alarm on evt/smoke" in reasons
        time.sleep(2.5)  # past the gateway's timeout: an acknowledged alarm raises no fault
        assert gw.ack_supervisor.faults == 0
    finally:
        gw.stop()
        watcher.conn.stop()
        code = central.stop()
    assert code == 0, central.output()[-2000:]
    # restarted: the quarantined messages were acknowledged (not redelivered), nothing doubles
    again = CentralProcess(broker, tmp_path).start()
    try:
        time.sleep(1.0)
        assert again.store.quarantined()[0] == len(poison_payloads())
        assert len(again.events("alarm")) == 1
    finally:
        again.stop()


def test_unacknowledged_alarm_faults_until_ingest_returns_and_dedupes_a_replay(tmp_path, broker):
    lamp = tmp_path / "lamp"
    lamp.write_text("0\n")
    watcher = Watcher(broker, client_id="fault-watcher")
    central = CentralProcess(broker, tmp_path).start()  # creates its persistent session
    central.stop()  # the operations center goes away
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
        _until(lambda: lamp.read_text().strip() == "1", 5, "the lamp on")
        # ingest returns: its session held the alarm; it stores, acks; the fault clears
        central = CentralProcess(broker, tmp_path).start()
        central.wait_event(alarm.id_hex)
        watcher.wait_for(
            lambda: any(
                e.data.get("code") == "alarm_unacknowledged" and not e.data["active"]
                for e in watcher.events("fault")
            ),
            what="fault cleared",
        )
        _until(lambda: lamp.read_text().strip() == "0", 5, "the lamp off")
        # the transmission fault came in as a fault and went as state: one row, cleared
        _until(
            lambda: any(
                f["code"] == "alarm_unacknowledged" and not f["active"]
                for f in central.store.faults(active_only=False)
            ),
            10,
            "the fault's state",
        )
        faults = [
            f for f in central.store.faults(active_only=False)
            if f["code"] == "alarm_unacknowledged"
        ]  # fmt: skip
        assert len(faults) == 1 and faults[0]["cleared_ms"], faults
        # a replay of the same alarm (a redelivery, a second path) changes nothing
        watcher.client.publish(f"{gw.topics.base}/evt/alarm", alarm.to_cbor(), qos=1)
        time.sleep(1.0)
        assert [e["id"] for e in central.events("alarm")] == [alarm.id_hex]
        assert central.store.queue()[0]["event_count"] == 1
    finally:
        gw.stop()
        watcher.conn.stop()
        central.stop()


def test_liveness_from_state_and_tele_and_labels_from_the_birth(tmp_path, broker):
    central = CentralProcess(broker, tmp_path).start()
    gw = make_gateway(tmp_path, broker, heartbeat_s=0.5)
    gw.start()
    try:

        def tele_seen() -> bool:
            g = central.store.gateway("d01/w01/gw-test-1")
            return bool(g and g["online"] and g["tele"])

        _until(tele_seen, 20, "the birth and a heartbeat")
        g = central.store.gateway("d01/w01/gw-test-1")
        assert g["silent"] is False and g["tele_ms"] >= g["last_seen_ms"] - 5000
    finally:
        gw.stop()
    _until(lambda: central.store.gateway("d01/w01/gw-test-1")["online"] is False, 20,
           "the gateway's offline state")  # fmt: skip
    central.stop()


@pytest.fixture
def tmpfs():
    yield from mount_tmpfs()


def test_nothing_is_acknowledged_while_the_store_cannot_write(tmp_path, broker, tmpfs):
    """The store on a really full filesystem: the alarm is neither acknowledged to the gateway
    nor PUBACKed to the broker until it is on disk; when space returns, both follow."""
    store = Store(f"sqlite:///{tmpfs / 'central.db'}")
    live = LiveState()
    cfg = CentralConfig()
    endpoint = policy.Endpoint(
        host=broker.host, port=broker.port, username=WATCHER_USER, password=WATCHER_PASSWORD,
        client_id="ingest-full", clean_start=False, session_expiry_s=600, keepalive_s=5,
    )  # fmt: skip
    ingest = Ingest(store, live, IngestOptions(endpoint=endpoint, batch_wait_s=0.0))
    assert cfg.broker.group == ingest.opts.group
    ingest.start()
    gw = make_gateway(tmp_path, broker, "timeout_s = 30")
    gw.start()
    try:
        _until(lambda: live.broker.connected, 10, "ingest connected")
        first = gw.emit(Kind.ALARM, "n01/smoke", {"cause": "smoke"})
        _until(lambda: gw.ack_supervisor.status()["acked"] == 1, 10, "the first ack")
        fill(tmpfs / "junk")
        alarm = gw.emit(Kind.ALARM, "n02/smoke", {"cause": "smoke"})
        time.sleep(3.0)
        assert gw.ack_supervisor.status()["pending"] == 1, "acknowledged before stored"
        assert "store error" in live.broker.detail
        os.unlink(tmpfs / "junk")
        _until(lambda: gw.ack_supervisor.status()["pending"] == 0, 15, "the ack after space")
        ids = {e["id"] for e in store.history(kind="alarm")}
        assert ids == {first.id_hex, alarm.id_hex}
    finally:
        gw.stop()
        ingest.stop()
        store.close()


def test_refused_credentials_exit_non_zero_and_say_why(tmp_path, broker):
    path = central_config(broker, tmp_path, password="wrong-password")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "central",
            "run",
            "--no-console",
            "--config",
            str(path),
            "--duration",
            "20",
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    assert "refused our credentials" in proc.stderr and "broker.username" in proc.stderr


def test_an_unreachable_broker_is_shown_not_a_quiet_night(tmp_path, broker):
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    live = LiveState()
    endpoint = policy.Endpoint(host="127.0.0.1", port=1, client_id="ingest-x",
                               backoff_initial_s=0.1, backoff_max_s=0.5)  # fmt: skip
    ingest = Ingest(store, live, IngestOptions(endpoint=endpoint))
    ingest.start()
    try:
        time.sleep(1.0)
        snap = live.snapshot()["broker"]
        assert snap["connected"] is False
        assert (
            ingest.conn.last_error and "cannot reach broker 127.0.0.1:1" in ingest.conn.last_error
        )
    finally:
        ingest.stop()
        store.close()


def test_the_config_file_reports_every_problem_with_its_line(tmp_path):
    bad = tmp_path / "central.toml"
    bad.write_text('[broker]\nport = "1883"\n\n[alarms]\nescalate_after_s = 0\nbogus = 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "central", "check-config", "--config", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3
    assert f"{bad}:2: broker.port" in proc.stderr
    assert f"{bad}:5: alarms.escalate_after_s" in proc.stderr
    assert f"{bad}:6: alarms.bogus" in proc.stderr


def test_the_terminal_screen_shows_the_queue_and_the_broker_link(tmp_path, broker):
    """`wardgate alarms --json` reads the store: the alarm, and the ingest's broker link, also
    when the link is down (never an empty screen that looks like a quiet night)."""
    central = CentralProcess(broker, tmp_path).start()
    gw = make_gateway(tmp_path, broker)
    gw.start()
    screen = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "alarms", "--json", "--config", str(central.config)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    records: list[dict] = []

    def read() -> None:
        for line in screen.stdout:
            records.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    try:
        alarm = gw.emit(Kind.ALARM, "n07/smoke", {"cause": "smoke"})
        _until(lambda: any(r["what"] == "incident" and r["first_event"] == alarm.id_hex
                           for r in records), 20, "the alarm on the screen")  # fmt: skip
        _until(lambda: any(r["what"] == "ingest" and r["connected"] for r in records), 10,
               "the broker link")  # fmt: skip
        broker.stop()
        _until(lambda: any(r["what"] == "ingest" and not r["connected"] for r in records), 20,
               "the broker link down")  # fmt: skip
    finally:
        screen.terminate()
        gw.stop()
        central.stop()


def test_user_add_names_a_bad_account_and_stores_a_good_one(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    pw = tmp_path / "pw"
    pw.write_text("short\n")
    base = [sys.executable, "-m", "edge.cli", "central", "user", "add"]
    bad = subprocess.run([*base, "anna", "--role", "dispatcher", "--password-file", str(pw),
                          "--db", db], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "at least 8 characters" in bad.stderr
    pw.write_text("a-long-enough-password\n")
    good = subprocess.run([*base, "anna", "--role", "supervisor", "--password-file", str(pw),
                           "--db", db], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0, good.stderr
    user = Store(db).user("anna")
    assert user["role"] == "supervisor" and user["password_hash"].startswith("$argon2")
