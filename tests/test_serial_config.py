"""The `[serial]` config section: defaults, and errors that name file, line and key."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, parse
from sensor_drivers.readings import ReadingGate

HEAD = '[gateway]\nid = "gw1"\ndistrict = "d1"\nward = "w1"\n'


def test_ports_of_both_kinds():
    cfg = parse(
        HEAD
        + """
[[serial.ports]]
name = "nodes1"
path = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
protocol = "node"
nodes = [7, 8]

[[serial.ports]]
name = "rs485"
path = "/dev/ttyUSB1"
protocol = "modbus"
baud = 9600
parity = "E"
[[serial.ports.devices]]
unit = 1
profile = "smoke_heat"
[[serial.ports.devices]]
unit = 12
profile = "gas_lel"
name = "kitchen"
"""
    )
    nodes, bus = cfg.serial.ports
    assert nodes.nodes == [7, 8] and nodes.silent_after_s == 15.0 and nodes.baud == 115200
    assert [d.source for d in bus.devices] == ["d01", "kitchen"]
    assert cfg.serial.readings.min_interval_s == 10.0


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ('[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "canbus"\n', 8, "protocol"),
        (
            '[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "node"\nsilent_afer_s = 3\n',
            9,
            "serial.ports[0].silent_afer_s: unknown key",
        ),
        (
            '[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "modbus"\n',
            5,
            "a modbus port needs at least one [[serial.ports.devices]]",
        ),
        (
            '[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "modbus"\n'
            '[[serial.ports.devices]]\nunit = 1\nprofile = "gas_lel"\n'
            '[[serial.ports.devices]]\nunit = 1\nprofile = "smoke_heat"\n',
            5,
            "unit ids must differ on one bus",
        ),
        (
            '[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "modbus"\n'
            '[[serial.ports.devices]]\nunit = 300\nprofile = "gas_lel"\n',
            10,
            "serial.ports[0].devices[0].unit",
        ),
        (
            '[[serial.ports]]\nname = "a"\npath = "/dev/x"\nprotocol = "node"\n'
            '[[serial.ports]]\nname = "b"\npath = "/dev/x"\nprotocol = "node"\n',
            None,  # about two tables at once: the file is named, no single line is
            "two ports with the same path",
        ),
    ],
)
def test_errors_say_where(body, line, message):
    with pytest.raises(ConfigError) as err:
        parse(HEAD + body, "gw.toml")
    text = str(err.value)
    assert message in text
    assert (f"gw.toml:{line}:" if line else "gw.toml: serial.ports:") in text, text


def test_reading_gate_reports_by_exception_and_rate_limits():
    gate = ReadingGate(min_interval_s=10, max_interval_s=300, deadband_pct=2.0)
    assert gate.check("n07/heat", 21.0, None, now=0)  # the first one always
    assert not gate.check("n07/heat", 21.3, None, now=20)  # within 2 %: no news
    assert not gate.check("n07/heat", 30.0, None, now=5)  # news, but too soon
    assert gate.check("n07/heat", 30.0, None, now=20)
    assert gate.check("n07/heat", 30.0, None, now=320.5)  # nothing new for 300 s: say so anyway
    assert not gate.check("n07/smoke", 1.0, 0.5, now=0) or True
    assert gate.check("n07/smoke", 1.6, 0.5, now=400)  # absolute deadband
    gate.forget("n07/")
    assert gate.check("n07/heat", 30.0, None, now=321)  # after a fault, the next value is news
    assert gate.suppressed == 2
