"""wardgate fire-sensor node firmware (MicroPython). See docs/sensors.md."""

VERSION = "1.0.0"
FIRMWARE = "wardgate-node " + VERSION
