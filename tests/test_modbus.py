"""Modbus RTU detectors: pymodbus's own RTU server on a pty pair plays the bus of detectors."""

from __future__ import annotations

import time

import pytest

from devtools.simulators import ModbusBus, PtyLink
from edge.config import ConfigError
from sensor_drivers.modbus_profile import load_profile
from tests.serial_support import Running, events, port_ctx, wait
from tests.vision_context import RecordingContext

SMOKE_HEAT = {"input": {0: 120, 1: 215}}  # 1.20 %/m, 21.5 degC
GAS = {"input": {0: 50, 1: 0}, "holding": {0: 200, 1: 400}}  # 5 %LEL, AL1 20, AL2 40


def modbus_ctx(path: str, devices: list[dict], **port) -> RecordingContext:
    settings = {
        "name": "rs485",
        "path": path,
        "protocol": "modbus",
        "baud": 115200,
        "parity": "N",  # as the simulator (Modbus RTU itself defaults to 19200 8E1)
        "poll_s": 0.1,
        "timeout_s": 0.1,
        "retries": 0,
        "fail_after": 2,
        "reconnect_s": 0.1,
        "reconnect_max_s": 0.2,
        "devices": devices,
    }
    settings.update(port)
    return port_ctx(settings)


@pytest.fixture
def bus():
    link = PtyLink()
    sim = ModbusBus(link.b, {1: dict(SMOKE_HEAT), 2: dict(GAS)}, baudrate=115200)
    yield link, sim
    sim.close()
    link.close()


DEVICES = [
    {"unit": 1, "profile": "smoke_heat"},
    {"unit": 2, "profile": "gas_lel", "name": "gas2"},
]


def test_two_detectors_on_one_bus_readings_alarms_levels_and_reset(bus):
    link, sim = bus
    r = Running(modbus_ctx(link.a, DEVICES))
    try:
        ctx = r.ctx
        wait(ctx, lambda: events(ctx, "reading", "gas2/gas"))
        readings = {e.source: e.data for e in ctx.of("reading")}
        assert readings["d01/smoke"] == {"value": 1.2, "unit": "%/m"}
        assert readings["d01/heat"] == {"value": 21.5, "unit": "degC"}
        assert readings["gas2/gas"] == {"value": 5.0, "unit": "%LEL"}
        assert "gas2/al1_set" not in readings  # read for status, not reported
        assert r.pipeline.status()["devices"]["gas2"]["values"]["al2_set"] == 40.0

        sim.set(2, "input", 0, 250)
        sim.set(2, "input", 1, 0b01)  # AL1
        [al1] = wait(ctx, lambda: events(ctx, "alarm", "gas2/gas"))
        assert al1.data == {"cause": "gas", "level": 1, "value": 25.0}
        sim.set(2, "input", 0, 460)
        sim.set(2, "input", 1, 0b11)  # AL2 as well
        wait(ctx, lambda: len(events(ctx, "alarm", "gas2/gas")) == 2)
        al2 = events(ctx, "alarm", "gas2/gas")[1]
        assert al2.data == {"cause": "gas", "level": 2, "value": 46.0}

        sim.set(1, "input", 0, 850)
        sim.set(1, "discrete", 0, 1)
        [smoke] = wait(ctx, lambda: events(ctx, "alarm", "d01/smoke"))
        assert smoke.data == {"cause": "smoke", "value": 8.5}
        for alarm in ctx.of("alarm"):
            assert len(alarm.to_cbor()) <= 100
        time.sleep(0.3)
        assert len(ctx.of("alarm")) == 3  # a flag that stays up is one alarm, not one per poll

        assert ctx.commands["sensor_reset"]({}) == {"d01": "ok", "gas2": "ok"}
        assert sim.get(1, "coil", 0) == 1
        assert sim.get(2, "holding", 2) == 1
        sim.set(1, "discrete", 1, 0)
        sim.set(1, "discrete", 9, 1)  # thermistor fault flag
        [fault] = wait(ctx, lambda: events(ctx, "fault", "d01/heat"))
        assert fault.data == {"active": True, "code": "thermistor"}
    finally:
        r.close()


def test_silent_units_are_faults_and_the_bus_goes_on(bus):
    link, sim = bus
    devices = [*DEVICES, {"unit": 3, "profile": "gas_lel"}]  # configured, but not on the bus
    r = Running(modbus_ctx(link.a, devices))
    try:
        ctx = r.ctx
        [missing] = wait(ctx, lambda: events(ctx, "fault", "d03"))
        assert missing.data == {"active": True, "code": "timeout"}

        sim.mute.add(1)  # detector 1 dies
        [dead] = wait(ctx, lambda: events(ctx, "fault", "d01"))
        assert dead.data == {"active": True, "code": "timeout"}
        sim.mute.discard(1)
        wait(ctx, lambda: len(events(ctx, "fault", "d01")) == 2)
        assert events(ctx, "fault", "d01")[1].data == {"active": False, "code": "timeout"}
        assert r.thread.is_alive()
    finally:
        r.close()


def test_crc_errors_are_faults_and_a_later_alarm_still_arrives(bus):
    link, sim = bus
    r = Running(modbus_ctx(link.a, DEVICES))
    try:
        ctx = r.ctx
        wait(ctx, lambda: events(ctx, "reading", "gas2/gas"))
        polls = r.pipeline.status()["devices"]["gas2"]["polls"]
        link.corrupt(1, 150)  # line noise on the answers
        wait(ctx, lambda: any(e.data.get("code") == "crc" for e in ctx.of("fault")))
        wait(ctx, lambda: any(e.data == {"active": False, "code": "crc"} for e in ctx.of("fault")))
        assert r.pipeline.crc_errors > 0
        wait(ctx, lambda: r.pipeline.status()["devices"]["gas2"]["polls"] > polls + 3)
        sim.set(2, "input", 1, 0b01)  # and a real alarm still gets through afterwards
        wait(ctx, lambda: events(ctx, "alarm", "gas2/gas"))
        assert r.thread.is_alive()
        assert not events(ctx, "fault", "rs485")  # the port itself was fine throughout
    finally:
        r.close()


def test_missing_port_is_a_fault_until_it_appears(tmp_path):
    link_path = tmp_path / "by-id" / "usb-rs485"
    r = Running(modbus_ctx(str(link_path), DEVICES[:1]))
    try:
        [fault] = wait(r.ctx, lambda: events(r.ctx, "fault", "rs485"))
        assert fault.data == {"active": True, "code": "port", "reason": "missing"}
        assert "not found" in r.pipeline.status()["detail"]
        link = PtyLink(link_b=link_path)
        sim = ModbusBus(link.a, {1: dict(SMOKE_HEAT)}, baudrate=115200)
        try:
            wait(r.ctx, lambda: len(events(r.ctx, "fault", "rs485")) == 2)
            assert events(r.ctx, "fault", "rs485")[1].data == {"active": False, "code": "port"}
            wait(r.ctx, lambda: events(r.ctx, "reading", "d01/heat"))
        finally:
            sim.close()
            link.close()
    finally:
        r.close()


def test_threshold_alarms_with_hysteresis_from_a_profile_file(bus, tmp_path):
    link, sim = bus
    profile = tmp_path / "transmitter.toml"
    profile.write_text(
        """
description = "plain 4-20 mA gas transmitter behind a Modbus analog input module"
[[points]]
name = "gas"
address = 0
scale = 0.1
unit = "%LEL"
[[alarms]]
name = "gas"
cause = "gas"
level = 1
point = "gas"
above = 20.0
hysteresis = 2.0
value_point = "gas"
"""
    )
    r = Running(modbus_ctx(link.a, [{"unit": 2, "profile": str(profile)}]))
    try:
        ctx = r.ctx
        sim.set(2, "input", 0, 205)
        wait(ctx, lambda: events(ctx, "alarm"))
        sim.set(2, "input", 0, 190)  # inside the hysteresis: still the same alarm
        time.sleep(0.3)
        sim.set(2, "input", 0, 210)
        time.sleep(0.3)
        assert len(events(ctx, "alarm")) == 1
        sim.set(2, "input", 0, 150)  # cleared
        time.sleep(0.3)
        sim.set(2, "input", 0, 220)
        wait(ctx, lambda: len(events(ctx, "alarm")) == 2)
    finally:
        r.close()


def test_profiles_ship_and_bad_ones_say_file_line_and_key(tmp_path):
    assert len(load_profile("gas_lel").alarms) == 2
    assert {a.level for a in load_profile("gas_lel").alarms} == {1, 2}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alarms]]\nname = "gas"\ncause = "gas"\ntable = "input"\naddress = 1\n')
    with pytest.raises(ConfigError) as err:
        load_profile(str(bad))
    assert f"{bad}:1: alarms[0]" in str(err.value) and "needs `bit`" in str(err.value)
    with pytest.raises(ConfigError) as err:
        modbus_ctx("/dev/null", [{"unit": 1, "profile": "no_such_detector"}])
    assert "no such profile" in str(err.value) and "gas_lel" in str(err.value)
