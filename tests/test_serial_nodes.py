"""The real node firmware (MicroPython unix port) on a pty, read by the real gateway driver.

Events land in a recording Context (tests/vision_context.py); the same pipeline through the real
runtime and Mosquitto is in test_serial_runtime.py.
"""

from __future__ import annotations

import os
import threading
import time
import tty
from pathlib import Path

import pytest

from devtools.unix_node import UnixNode
from protocol import node_protocol as np
from sensor_drivers.port import PortError, SerialPort
from tests.serial_support import Running, events, port_ctx, wait
from tests.vision_context import RecordingContext

NODE = {
    "node": 7,
    "heartbeat_s": 1,
    "sample_ms": 10,
    "reading_min_s": 0,
    "sounder_pin": "sounder",
    "sensors": [
        {"kind": "smoke", "name": "smoke", "pin": "smoke_adc"},
        {"kind": "heat", "name": "heat", "pin": "heat_adc", "ror_window_s": 2},
        {"kind": "flame", "name": "flame", "pin": "flame_in"},
        {"kind": "call_point", "name": "mcp", "pin": "mcp_line", "input": "eol"},
    ],
}


def serial_ctx(port: str, **port_settings) -> RecordingContext:
    settings = {"name": "nodes1", "path": port, "protocol": "node", "nodes": [7]}
    settings.update(port_settings)
    return port_ctx(settings)


@pytest.fixture
def node(tmp_path):
    with UnixNode(NODE, link=tmp_path / "by-id" / "usb-wardgate-node07") as n:
        yield n


@pytest.fixture
def running(node):
    r = Running(serial_ctx(str(node.link)))
    wait(r.ctx, lambda: r.pipeline.nodes[7].boot_id is not None)
    yield r
    r.close()


def test_hello_readings_and_a_call_point_alarm(node, running):
    ctx = running.ctx
    state = running.pipeline.nodes[7]
    assert state.firmware.startswith("wardgate-node ")
    assert [n for _, n in state.sensors] == ["smoke", "heat", "flame", "mcp"]
    wait(ctx, lambda: events(ctx, "reading", "n07/heat"))
    heat = events(ctx, "reading", "n07/heat")[0]
    assert heat.data == {"value": pytest.approx(22.0, abs=0.05), "unit": "degC"}

    node.press("mcp")
    edge = node.wait_edge("alarm mcp")
    [alarm] = wait(ctx, lambda: events(ctx, "alarm"))
    assert alarm.source == "n07/mcp" and alarm.data == {"cause": "call_point"}
    assert len(alarm.to_cbor()) <= 100
    assert alarm.time_ms * 1_000_000 >= edge.t_ns - 5_000_000  # after the node's edge
    node.wait_output("sounder", 1)
    # the alarm was acknowledged: the node stops repeating it, no duplicate event follows
    time.sleep(0.5)
    assert len(events(ctx, "alarm")) == 1
    assert state.duplicates == 0


def test_alarm_latches_until_reset_then_alarms_again_if_still_present(node, running):
    ctx = running.ctx
    node.press("flame")
    wait(ctx, lambda: events(ctx, "alarm", "n07/flame"))
    node.release("flame")
    time.sleep(0.3)
    assert running.pipeline.status()["nodes"]["n07"]["alarms_latched"] == ["n07/flame"]
    assert ctx.commands["sensor_silence"]({"sources": ["n07"]}) == {"n07": "ok"}
    node.wait_output("sounder", 0)
    assert ctx.commands["sensor_reset"]({}) == {"n07": "ok"}
    node.wait_edge("reset")
    assert len(events(ctx, "alarm")) == 1  # released before the reset: nothing new

    node.press("flame")
    wait(ctx, lambda: len(events(ctx, "alarm", "n07/flame")) == 2)
    assert ctx.commands["sensor_reset"]({"sources": ["n07/flame"]}) == {"n07": "ok"}
    # still burning after the reset: a new alarm, as a fire panel does
    wait(ctx, lambda: len(events(ctx, "alarm", "n07/flame")) == 3)


def test_heat_fixed_threshold_and_rate_of_rise(node, running):
    ctx = running.ctx
    node.set_temperature("heat", 30.0)
    for step in range(12):  # 30 -> 45 degC in 1.2 s: far above 10 degC/min, below 58 degC
        node.set_temperature("heat", 30.0 + step * 1.25)
        time.sleep(0.1)
    [ror] = wait(ctx, lambda: events(ctx, "alarm", "n07/heat"), 5)
    assert ror.data["cause"] == "heat_ror" and ror.data["value"] > 100  # degC per minute
    node.set_temperature("heat", 45.0)
    time.sleep(2.5)  # steady for a whole window: the rate of rise falls to zero
    assert ctx.commands["sensor_reset"]({}) == {"n07": "ok"}
    time.sleep(0.5)
    assert len(events(ctx, "alarm", "n07/heat")) == 1
    node.set_temperature("heat", 61.0)
    wait(ctx, lambda: len(events(ctx, "alarm", "n07/heat")) == 2, 5)
    fixed = events(ctx, "alarm", "n07/heat")[1]
    assert fixed.data["cause"] == "heat" and 60.5 <= fixed.data["value"] <= 61.5


def test_smoke_threshold_and_line_faults(node, running):
    ctx = running.ctx
    node.set_smoke("smoke", 45.0)  # below the 50 % alarm threshold
    time.sleep(0.3)
    assert not events(ctx, "alarm")
    node.open_line("heat")
    [fault] = wait(ctx, lambda: events(ctx, "fault", "n07/heat"))
    assert fault.data == {"active": True, "code": "open"}
    node.restore_line("heat")
    wait(ctx, lambda: len(events(ctx, "fault", "n07/heat")) == 2)
    assert events(ctx, "fault", "n07/heat")[1].data == {"active": False, "code": "open"}
    node.short_line("mcp")
    wait(ctx, lambda: events(ctx, "fault", "n07/mcp"))
    assert events(ctx, "fault", "n07/mcp")[0].data == {"active": True, "code": "short"}
    assert not events(ctx, "alarm")  # a shorted line is a fault, never an alarm
    node.set_smoke("smoke", 60.0)
    [alarm] = wait(ctx, lambda: events(ctx, "alarm"))
    assert alarm.source == "n07/smoke" and alarm.data["cause"] == "smoke"
    assert 59.0 <= alarm.data["value"] <= 61.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_unplug_is_a_fault_and_replug_restores_without_leaks(tmp_path):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    node = UnixNode(NODE, link=link).plug()
    r = Running(serial_ctx(str(link), silent_after_s=1.0, reconnect_s=0.1, reconnect_max_s=0.2))
    try:
        ctx = r.ctx
        wait(ctx, lambda: r.pipeline.nodes[7].boot_id is not None)
        node.release_port()
        threads, fds = threading.active_count(), _fds()
        for cycle in range(3):
            node.unplug()
            wait(ctx, lambda c=cycle: len(events(ctx, "fault", "nodes1")) == 2 * c + 1)
            wait(ctx, lambda c=cycle: len(events(ctx, "fault", "n07")) == 2 * c + 1, 4)
            assert events(ctx, "fault", "n07")[-1].data["code"] == "silent"
            assert events(ctx, "fault", "nodes1")[-1].data["active"] is True
            node.plug()
            node.release_port()
            wait(ctx, lambda c=cycle: len(events(ctx, "fault", "nodes1")) == 2 * c + 2)
            wait(ctx, lambda c=cycle: len(events(ctx, "fault", "n07")) == 2 * c + 2)
            assert events(ctx, "fault", "n07")[-1].data == {"active": False, "code": "silent"}
        # the node is back and fully working: a new alarm arrives
        node.press("mcp")
        wait(ctx, lambda: events(ctx, "alarm", "n07/mcp"))
        assert threading.active_count() == threads
        assert _fds() == fds
        assert r.thread.is_alive()
        assert r.pipeline.port.opened == 4 and r.pipeline.port.lost == 3
    finally:
        r.close()
        node.close()


def test_expected_node_that_never_speaks_is_a_fault(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    r = Running(serial_ctx(os.ttyname(slave), silent_after_s=0.3))
    try:
        [fault] = wait(r.ctx, lambda: events(r.ctx, "fault", "n07"), 3)
        assert fault.data == {"active": True, "code": "silent", "after_s": 0.3}
    finally:
        r.close()
        os.close(master)
        os.close(slave)


class Peer:
    """A hand-driven node on the pty master, to send what a healthy node never would."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave
        self.decoder = np.Decoder()
        self.received: list[np.Message] = []

    def send(self, mtype: int, seq: int, **fields) -> None:
        os.write(self.master, np.encode(np.Message(mtype, 7, seq, fields)))

    def read(self, timeout: float = 1.0) -> list[np.Message]:
        deadline = time.monotonic() + timeout
        os.set_blocking(self.master, False)
        while time.monotonic() < deadline:
            try:
                self.received += self.decoder.feed(os.read(self.master, 4096))
            except BlockingIOError:
                time.sleep(0.01)
        return self.received

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


def hello(peer: Peer, boot_id: int = 1) -> None:
    peer.send(
        np.HELLO, 0, boot_id=boot_id, heartbeat_s=5, firmware="peer", sensors=[["smoke", "smoke"]]
    )


def test_garbage_repeats_and_lost_acks():
    peer = Peer()
    r = Running(serial_ctx(peer.port)).wait_open()
    try:
        ctx = r.ctx
        hello(peer)
        os.write(peer.master, b"\xff\x13line noise\x00\x00\x07")
        alarm = np.encode(
            np.Message(
                np.ALARM, 7, 1, {"sensor": 0, "cause": "smoke", "value": 7700, "name": "smoke"}
            )
        )
        corrupt = bytearray(alarm)
        corrupt[5] ^= 0x20
        os.write(peer.master, bytes(corrupt))  # a bit flipped on the line: no event
        os.write(peer.master, alarm)
        os.write(peer.master, alarm)  # the node did not hear our ack and repeats
        [event] = wait(ctx, lambda: events(ctx, "alarm"))
        assert event.source == "n07/smoke" and event.data == {"cause": "smoke", "value": 77.0}
        acks = [m for m in peer.read(0.5) if m.type == np.ACK]
        assert sorted(m.fields["acked"] for m in acks) == [0, 1, 1]  # hello, alarm, its repeat
        counters = r.pipeline.decoder.counters()
        assert counters["crc_errors"] == 1 and counters["framing_errors"] >= 1
        assert r.pipeline.nodes[7].duplicates == 1
        assert len(events(ctx, "alarm")) == 1
    finally:
        r.close()
        peer.close()


def test_a_lost_alarm_frame_is_recovered_from_the_heartbeat():
    peer = Peer()
    r = Running(serial_ctx(peer.port)).wait_open()
    try:
        hello(peer)
        peer.send(np.HEARTBEAT, 1, uptime_s=9, alarms=1, faults=0, flags=0, crc_errors=0)
        [event] = wait(r.ctx, lambda: events(r.ctx, "alarm"))
        assert event.source == "n07/smoke" and event.data == {"cause": "smoke", "via": "heartbeat"}
        # the alarm frame itself, repeated later, is the same latch: no second event
        peer.send(np.ALARM, 2, sensor=0, cause="smoke", value=9000, name="smoke")
        peer.send(np.HEARTBEAT, 3, uptime_s=10, alarms=1, faults=0, flags=0, crc_errors=0)
        time.sleep(0.3)
        assert len(events(r.ctx, "alarm")) == 1
    finally:
        r.close()
        peer.close()


def test_a_rebooted_node_is_not_taken_for_repeats():
    peer = Peer()
    r = Running(serial_ctx(peer.port)).wait_open()
    try:
        hello(peer, boot_id=1)
        peer.send(np.ALARM, 1, sensor=0, cause="smoke", value=9000, name="smoke")
        wait(r.ctx, lambda: events(r.ctx, "alarm"))
        hello(peer, boot_id=2)  # power cycle: sequence numbers start again
        peer.send(np.ALARM, 1, sensor=0, cause="smoke", value=9100, name="smoke")
        wait(r.ctx, lambda: len(events(r.ctx, "alarm")) == 2)
    finally:
        r.close()
        peer.close()


def test_port_open_is_exclusive_and_by_id_names_resolve(tmp_path):
    master, slave = os.openpty()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-FTDI_FT232R-if00-port0").symlink_to(os.ttyname(slave))
    first = SerialPort("usb-FTDI_FT232R-if00-port0", by_id_dir=by_id)
    second = SerialPort(os.ttyname(slave), by_id_dir=by_id)
    try:
        first.open()
        assert first.device == Path(os.ttyname(slave))
        with pytest.raises(PortError, match="in use by another program") as busy:
            second.open()
        assert busy.value.reason == "busy"
        with pytest.raises(PortError, match=r"not found.*usb-FTDI_FT232R-if00-port0") as missing:
            SerialPort("usb-other", by_id_dir=by_id).open()
        assert missing.value.reason == "missing"
    finally:
        first.close()
        second.close()
        os.close(master)
        os.close(slave)


def test_serial_monitor_prints_frames_and_acks(node):
    import json
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "serial",
            "monitor",
            "--port",
            str(node.link),
            "--ack",
            "--json",
            "--seconds",
            "1.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.7)
    node.press("mcp")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    alarm = next(f for f in frames if f["type"] == "alarm")
    assert alarm["name"] == "mcp" and alarm["cause"] == "call_point"
    assert sum(f["type"] == "alarm" for f in frames) == 1  # acked: not repeated
    assert '"crc_errors": 0' in err
