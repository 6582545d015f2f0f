"""Issue 8, the alarm chain at the edge, against real processes: the MicroPython node firmware on a
pty, real Mosquitto, a real receiver process, a gateway process whose wall clock libfaketime steps,
and a real SQLite lock.

- a node alarm whose first commit fails (SQLite busy) becomes an event once, when storage is back
- 300 `reload`s in a flood do not delay or drop the receiver's acknowledgements; coalesced
- the transmission-fault deadline holds across wall-clock steps of +-1 h
- a reload while a pipeline waits in its restart backoff leaves the gateway healthy
- a node reboot restores the line faults the rebooted node no longer has
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from devtools.unix_node import UnixNode
from edge import config, runtime
from edge.pipeline import NotAccepted, Pipeline
from edge.runtime import Gateway
from protocol import retry
from tests.central_support import CentralProcess
from tests.harness import (
    GatewayProcess,
    SteppedClock,
    Watcher,
    gateway_config_text,
    write_config,
)
from tests.serial_support import Running, events, wait
from tests.test_serial_nodes import NODE, serial_ctx


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _node_port(link: Path, **extra) -> str:
    settings = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return f"""
[[serial.ports]]
name = "nodes1"
path = "{link}"
protocol = "node"
nodes = [7]
{settings}"""


# --- defects 4 and 5: the accept contract -----------------------------------------------------
def test_node_alarm_refused_by_a_busy_outbox_becomes_one_event_when_storage_is_back(
    broker, tmp_path
):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    text = gateway_config_text(broker, tmp_path, extra="[alarm_ack]\nenabled = false\n")
    gw = Gateway(config.load(write_config(tmp_path, text + _node_port(link))))
    watcher = Watcher(broker, client_id="integrity-watcher")
    with UnixNode(NODE, link=link) as node:
        gw.start()
        try:
            watcher.wait_for(
                lambda: any(e.source == "n07/heat" for e in watcher.events("reading")),
                what="the node's first reading",
            )
            _until(lambda: len(gw.outbox) == 0, 10, "the outbox to drain")
            # another process holds SQLite's write lock; the gateway gives up after 20 ms: a
            # real sqlite3.OperationalError ("database is locked") on the alarm's commit
            gw.outbox.sql("PRAGMA busy_timeout = 20")
            other = sqlite3.connect(gw.config.outbox.path, isolation_level=None, timeout=0)
            other.execute("BEGIN EXCLUSIVE")
            try:
                node.press("mcp")
                node.wait_edge("alarm mcp")
                time.sleep(1.2)  # the node repeats its alarm at 0.2, 0.6 s: all refused
                assert not watcher.events("alarm")
                with pytest.raises(NotAccepted):  # an operator's test-alarm: ok=false, no id
                    gw._cmd_test_alarm({})
            finally:
                other.execute("ROLLBACK")
                other.close()
            watcher.wait_for_events("alarm", timeout=10)
            time.sleep(2.5)  # more repeats and two heartbeats with the latch bit: no new event
            alarms = [e for e in watcher.events("alarm") if e.source == "n07/mcp"]
            assert len(alarms) == 1, alarms
            assert alarms[0].data == {"cause": "call_point"}
            [pipe] = [p for p in gw.pipelines if p.name == "serial-nodes1"]
            assert pipe.not_accepted >= 1  # the refused frames were left unacknowledged
            assert pipe.state == "ok"
            assert gw.healthy() == (True, "ok")
        finally:
            gw.stop()
            watcher.stop()


# --- defect 6: acks and commands on separate paths ----------------------------------------------
def test_a_flood_of_300_reloads_neither_delays_nor_drops_alarm_acknowledgements(broker, tmp_path):
    text = gateway_config_text(broker, tmp_path, extra="[alarm_ack]\ntimeout_s = 3\n")
    path = write_config(tmp_path, text)
    gw = Gateway(config.load(path), config_path=path)
    rx = CentralProcess(broker, tmp_path).start()
    watcher = Watcher(broker, client_id="flood-watcher")
    gw.start()
    try:
        watcher.wait_for(lambda: watcher.on("/state"), what="the gateway's birth")
        path.write_text(text.replace("heartbeat_s = 60", "heartbeat_s = 61"))  # one real change
        t0 = time.monotonic()
        sent = [  # a burst, as an operator's runaway script sends it
            watcher.client.publish(f"{gw.topics.base}/cmd/reload", json.dumps({"id": i}), qos=1)
            for i in range(300)
        ]
        alarm_ids = []
        for i in range(10):
            alarm_ids.append(gw.emit("alarm", f"test/flood{i}", {"cause": "test"}).id_hex)
            time.sleep(0.05)
        for info in sent:
            info.wait_for_publish(5)
        status = gw.ack_supervisor.status
        _until(lambda: status()["acked"] == 10, 8, "10 acknowledgements")
        acked_after = time.monotonic() - t0
        time.sleep(3.5)  # past the (shortened) EN 54-21 timeout of every alarm
        final = status()
        assert final["pending"] == 0 and final["faulted"] == 0 and final["faults"] == 0
        assert not [e for e in watcher.events("fault") if e.source == "uplink/ack"]
        # every request answered, by far fewer reloads
        watcher.wait_for(lambda: len(watcher.on("/cmd/res")) >= 300, 10, "300 replies")
        replies = [json.loads(m.payload) for m in watcher.on("/cmd/res")]
        assert sorted(r["id"] for r in replies) == list(range(300))
        assert all(r["ok"] for r in replies), replies[:3]
        stats = gw.command_stats
        assert stats["reloads"] + stats["reloads_coalesced"] == 300, stats
        assert stats["reloads"] <= 100, stats  # 300 requests, far fewer reloads (34 here)
        assert stats["busy"] == 0
        assert gw.config.health.heartbeat_s == 61  # and the change was applied
        print(f"acks in {acked_after:.2f} s during the flood; commands {stats}")
    finally:
        gw.stop()
        rx.stop()
        watcher.stop()


# --- defect 7: monotonic deadlines ----------------------------------------------------------------
@pytest.mark.skipif(not SteppedClock.LIB, reason="libfaketime is not installed (Debian: faketime)")
def test_transmission_fault_deadline_holds_across_wall_clock_steps(broker, tmp_path):
    clock = SteppedClock(tmp_path)
    text = gateway_config_text(broker, tmp_path, extra="[alarm_ack]\ntimeout_s = 3\n")
    env = clock.env()
    watcher = Watcher(broker, client_id="clock-watcher")
    gw = GatewayProcess(write_config(tmp_path, text), env=env).start()
    try:
        watcher.wait_for(lambda: watcher.on("/state"), what="the gateway's birth")
        base = watcher.on("/state")[0].topic.rsplit("/", 1)[0]

        def alarm_then_step(step: str) -> tuple[str, float]:
            before = len(watcher.events("alarm"))
            watcher.publish(f"{base}/cmd/test-alarm", b"{}")
            watcher.wait_for(lambda: len(watcher.events("alarm")) > before, what="the alarm")
            clock.step(step)  # the wall clock of the gateway process steps now
            with watcher.lock:
                rec = [m for m in watcher.messages if m.event and m.event.kind == "alarm"][-1]
            return rec.event.id_hex, rec.at

        def fault_delay(alarm_id: str, since: float) -> float:
            def faults():
                with watcher.lock:
                    return [
                        m
                        for m in watcher.messages
                        if m.event
                        and m.event.kind == "fault"
                        and m.event.data.get("alarm") == alarm_id
                    ]

            watcher.wait_for(lambda: faults(), timeout=10, what=f"the fault for {alarm_id}")
            [fault] = faults()
            assert fault.event.data["active"] is True
            return fault.at - since

        # checked every timeout/4 = 0.75 s: never early, never much later
        forward_id, at = alarm_then_step("+3600")  # NTP steps the clock forward by an hour
        forward = fault_delay(forward_id, at)
        print(f"fault {forward:.2f} s after the alarm (clock +1 h)")
        assert 2.8 <= forward <= 4.5, forward
        back_id, at = alarm_then_step("+0")  # and back again
        back = fault_delay(back_id, at)
        print(f"fault {back:.2f} s after the alarm (clock -1 h)")
        assert 2.8 <= back <= 4.5, back
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
    finally:
        gw.terminate()
        watcher.stop()


# --- defect 10: reload during a restart backoff ------------------------------------------------
class Flaky(Pipeline):
    """Fails the first time it ever runs; every later run (and instance) is fine."""

    failures = 0

    def run(self, stop: threading.Event) -> None:
        if Flaky.failures == 0:
            Flaky.failures += 1
            raise RuntimeError("flaky pipeline fails once")
        self.set_state("ok")
        stop.wait()


def test_reload_during_a_restart_backoff_leaves_the_gateway_healthy(broker, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "FAILED_UNHEALTHY_S", 1.0)
    monkeypatch.setattr(retry, "full_jitter", lambda value: value)  # 2.1 s backoff
    Flaky.failures = 0
    text = gateway_config_text(broker, tmp_path)
    path = write_config(tmp_path, text)
    gw = Gateway(config.load(path), config_path=path, extra_pipelines=lambda g: [Flaky("flaky", g)])
    watcher = Watcher(broker, client_id="backoff-watcher")
    gw.start()
    try:
        [flaky] = [p for p in gw.pipelines if p.name == "flaky"]
        _until(lambda: flaky.state == "failed", 5, "the first failure")
        path.write_text(text.replace("heartbeat_s = 60", "heartbeat_s = 61"))
        result = gw._cmd_reload({})  # while the failed pipeline waits in its backoff
        time.sleep(1.5)  # past the (shortened) unhealthy limit
        assert gw.healthy() == (True, "ok")
        assert result.get("restarted") is True and result.get("applied") == ["health"], result
        # the fault the old generation raised is restored by the new one
        watcher.wait_for(
            lambda: [e for e in watcher.events("fault") if e.source == "pipe/flaky"][1:],
            what="the pipeline fault and its restore",
        )
        faults = [e.data["active"] for e in watcher.events("fault") if e.source == "pipe/flaky"]
        assert faults == [True, False]
    finally:
        gw.stop()
        watcher.stop()


def test_reload_applies_or_refuses_every_section_and_says_which(broker, tmp_path):
    text = gateway_config_text(broker, tmp_path, extra="[alarm_ack]\ntimeout_s = 50\n")
    path = write_config(tmp_path, text)
    gw = Gateway(config.load(path), config_path=path)
    gw.start()
    try:
        assert gw._cmd_reload({})["applied"] == []  # nothing changed: nothing restarted
        edited = text.replace("timeout_s = 50", "timeout_s = 20").replace(
            'ward = "w01"', 'ward = "w02"'
        )
        path.write_text(edited)
        result = gw._cmd_reload({})
        assert result["applied"] == ["alarm_ack"]
        assert result["restart_required_for"] == ["gateway"]
        assert gw.ack_supervisor.cfg.timeout_s == 20  # applied to the running supervisor
        assert gw.config.gateway.ward == "w01"  # refused: the running value stays
    finally:
        gw.stop()


def test_pending_acks_of_an_older_release_are_migrated_and_still_supervised(broker, tmp_path):
    outbox = tmp_path / "outbox.sqlite3"
    db = sqlite3.connect(outbox)
    db.executescript(
        "CREATE TABLE pending_acks (event_id TEXT PRIMARY KEY, source TEXT NOT NULL,"
        " committed_ms INTEGER NOT NULL, faulted INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO pending_acks VALUES ('00ff', 'n07/smoke', 1, 0);"
    )
    db.close()
    text = gateway_config_text(broker, tmp_path, extra="[alarm_ack]\ntimeout_s = 3\n")
    gw = Gateway(config.load(write_config(tmp_path, text)))
    try:
        columns = {row[1] for row in gw.outbox.sql("PRAGMA table_info(pending_acks)")}
        assert {"boot_id", "mono_ms", "acked"} <= columns
        gw.ack_supervisor.check()  # a row from before the upgrade is long overdue
        assert gw.ack_supervisor.status()["faulted"] == 1
        gw.ack_supervisor.on_ack("00ff", {"id": "00ff"})
        assert gw.ack_supervisor.status()["pending"] == 0
    finally:
        gw.stop()


# --- defect 11: node reboot reconciles faults -------------------------------------------------
def test_node_reboot_restores_line_faults_the_node_no_longer_has(tmp_path):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    node = UnixNode(NODE, link=link).plug()
    r = Running(serial_ctx(str(link), reconnect_s=0.1, reconnect_max_s=0.2))
    try:
        ctx = r.ctx
        wait(ctx, lambda: r.pipeline.nodes[7].boot_id is not None)
        node.release_port()
        node.open_line("heat")
        node.short_line("mcp")
        wait(ctx, lambda: events(ctx, "fault", "n07/heat") and events(ctx, "fault", "n07/mcp"))
        # power cycle: the heat line was repaired meanwhile, the call point is still shorted
        node.unplug()
        node.restore_line("heat")
        node.plug()
        node.release_port()
        wait(ctx, lambda: events(ctx, "fault", "n07/heat")[1:], timeout=8)
        heat = events(ctx, "fault", "n07/heat")
        assert [e.data["active"] for e in heat] == [True, False]
        assert heat[1].data["code"] == "open"
        time.sleep(1.5)  # a few more heartbeats: the call point fault stands, no flapping
        mcp = events(ctx, "fault", "n07/mcp")
        assert [e.data for e in mcp] == [{"active": True, "code": "short"}]
        assert r.pipeline.status()["nodes"]["n07"]["faults"] == ["n07/mcp:short"]
    finally:
        r.close()
        node.close()
