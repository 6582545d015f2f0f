"""Every fault code a gateway emits (`data.code` of a `fault` event), with what it means for a
dispatcher and its category: one list for the gateway, the docs (docs/events.md's table is
generated from it and kept equal by tests/test_faults.py) and the operations center.

The Modbus detector profiles (sensor_drivers/profiles/*.toml) name their own fault codes; the
shipped profiles' codes are listed here (a test checks it). A site's own profile may add codes:
`describe` and `category` answer for those too (the code itself, category `unknown`), so a
consumer never fails on a code it has not heard of.
"""

from __future__ import annotations

import dataclasses

# Categories: what kind of trouble, so a screen can group and a dispatcher can route.
LINE = "line"  # a sensor line or sensor (open, short, out of range): that sensor cannot alarm
NODE = "node"  # a serial sensor node as a whole (silent, rejected config, firmware error)
DEVICE = "device"  # Modbus communication with one detector (timeout, CRC, exception)
DETECTOR = "detector"  # a fault a Modbus detector reports about itself (per its profile)
PORT = "port"  # the serial port (RS-485 adapter, USB cable) of a whole sensor line
CAMERA = "camera"  # an IP camera
PIPELINE = "pipeline"  # a gateway pipeline (serial, vision, ...) that failed and restarts
SUPERVISION = "supervision"  # the alarm chain itself (an alarm nobody acknowledged)
UNKNOWN = "unknown"  # a code not in this list (e.g. from a site's own Modbus profile)

CATEGORIES = (LINE, NODE, DEVICE, DETECTOR, PORT, CAMERA, PIPELINE, SUPERVISION)


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    code: str
    category: str
    description: str
    raised_by: str  # where it comes from (for the docs table)


# Node and gateway fault codes as constants, for the emitters.
OPEN = "open"
SHORT = "short"
RANGE = "range"
CONFIG = "config"
INTERNAL = "internal"
SILENT = "silent"
TIMEOUT = "timeout"
CRC = "crc"
EXCEPTION = "exception"
SHORT_REPLY = "short_reply"
PORT_FAULT = "port"
CAMERA_OFFLINE = "camera_offline"
PIPELINE_FAILED = "pipeline_failed"
ALARM_UNACKNOWLEDGED = "alarm_unacknowledged"

FAULTS: tuple[Fault, ...] = (
    # sensor nodes (protocol/node_protocol.py FAULT_CODES; firmware/node/)
    Fault(
        OPEN,
        LINE,
        "sensor line open circuit: broken wire or head removed; the sensor cannot alarm",
        "node sensor",
    ),
    Fault(SHORT, LINE, "sensor line short circuit; the sensor cannot alarm", "node sensor"),
    Fault(
        RANGE,
        LINE,
        "sensor reading outside what it can physically report; check the sensor",
        "node sensor",
    ),
    Fault(
        CONFIG,
        NODE,
        "the sensor node rejected its configuration (node.json) and runs without sensors",
        "node",
    ),
    Fault(INTERNAL, NODE, "sensor node firmware error (caught exception or watchdog)", "node"),
    Fault(
        SILENT,
        NODE,
        "sensor node silent: no frame within `silent_after_s` (power, cable, "
        "node dead); its sensors cannot alarm",
        "node (sensor_drivers/node_driver.py)",
    ),
    # Modbus detectors: communication (sensor_drivers/modbus.py)
    Fault(
        TIMEOUT,
        DEVICE,
        "Modbus detector does not answer (power, address, RS-485 wiring); it cannot alarm",
        "Modbus device",
    ),
    Fault(
        CRC,
        DEVICE,
        "Modbus detector answers with corrupt frames (wiring, termination, baud rate)",
        "Modbus device",
    ),
    Fault(
        EXCEPTION,
        DEVICE,
        "Modbus detector answers with a Modbus exception (wrong profile or register map)",
        "Modbus device",
    ),
    Fault(
        SHORT_REPLY,
        DEVICE,
        "Modbus detector answers with fewer values than asked (wrong profile)",
        "Modbus device",
    ),
    # Modbus detectors: what they report about themselves (sensor_drivers/profiles/*.toml)
    Fault(
        "chamber", DETECTOR, "optical smoke chamber dirty or failed", "Modbus profile smoke_heat"
    ),
    Fault("thermistor", DETECTOR, "heat sensor (thermistor) failed", "Modbus profile smoke_heat"),
    Fault("sensor", DETECTOR, "gas sensing element failed", "Modbus profile gas_lel"),
    Fault(
        "over_range",
        DETECTOR,
        "gas above 100 %LEL: the catalytic sensor can no longer be trusted; treat as dangerous",
        "Modbus profile gas_lel",
    ),
    # the gateway itself
    Fault(
        PORT_FAULT,
        PORT,
        "serial port missing, busy or not permitted (USB cable, adapter); "
        "every sensor on it is out (`reason` says which)",
        "serial pipeline, Modbus device",
    ),
    Fault(
        CAMERA_OFFLINE,
        CAMERA,
        "camera delivers no frames (network, power, stream); no person or smoke detection there",
        "camera (edge/vision/pipeline.py)",
    ),
    Fault(
        PIPELINE_FAILED,
        PIPELINE,
        "a gateway pipeline crashed and is being restarted",
        "gateway (edge/runtime.py)",
    ),
    Fault(
        ALARM_UNACKNOWLEDGED,
        SUPERVISION,
        "an alarm was sent but no receiver acknowledged it "
        "in time: the alarm may not have reached the fire brigade",
        "gateway (edge/alarm_ack.py)",
    ),
)

BY_CODE: dict[str, Fault] = {f.code: f for f in FAULTS}
assert len(BY_CODE) == len(FAULTS), "one meaning per fault code"


def describe(code: str) -> str:
    """The dispatcher's text for a fault code; an unknown code is shown as itself."""
    fault = BY_CODE.get(code)
    return fault.description if fault is not None else str(code)


def category(code: str) -> str:
    """The category of a fault code (one of CATEGORIES), `unknown` for a code not listed."""
    fault = BY_CODE.get(code)
    return fault.category if fault is not None else UNKNOWN


def markdown_table() -> str:
    """The table docs/events.md carries (tests/test_faults.py keeps the two equal)."""
    lines = ["| code | category | raised by | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{f.code}` | {f.category} | {f.raised_by} | {f.description} |" for f in FAULTS]
    return "\n".join(lines)
