"""Serial ports: by path or stable by-id name, exclusive, with errors that say what to do.

A USB-serial adapter that is pulled out and plugged back in usually comes back under another
/dev/ttyUSBn, but under the same /dev/serial/by-id/<name>: configure that name and the gateway
finds the port again by itself.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import TYPE_CHECKING

import serial

from edge.pipeline import Context, Pipeline
from protocol import faults
from protocol.retry import Backoff
from sensor_drivers.config import BY_ID_DIR, resolve

if TYPE_CHECKING:
    from sensor_drivers.config import PortSettings
    from sensor_drivers.readings import ReadingGate


class PortError(Exception):
    """The port cannot be used now; the message says why and what to do.

    `reason` is a word for the fault event: missing, busy, permission, lost, error.
    """

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class PortLost(PortError):
    """An open port stopped working (unplugged, hung up)."""

    def __init__(self, message: str, reason: str = "lost") -> None:
        super().__init__(message, reason)


def describe_missing(path: str, by_id_dir: Path = BY_ID_DIR) -> str:
    where = resolve(path, by_id_dir)
    hint = "is the adapter plugged in?"
    if where.parent == by_id_dir or "/" not in path:
        try:
            names = sorted(p.name for p in by_id_dir.iterdir())
        except OSError:
            names = []
        hint += f" by-id names present: {names}" if names else f" ({by_id_dir} is empty)"
    return f"serial port {where}: not found; {hint}"


class SerialPort:
    def __init__(
        self,
        path: str,
        baud: int = 115200,
        parity: str = "N",
        stopbits: int = 1,
        *,
        by_id_dir: Path = BY_ID_DIR,
    ) -> None:
        self.path = path
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        self.by_id_dir = by_id_dir
        self.device: Path | None = None  # what the path resolved to when opened
        self._serial: serial.Serial | None = None
        self.opened = 0
        self.lost = 0

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        target = resolve(self.path, self.by_id_dir)
        if not target.exists():
            raise PortError(describe_missing(self.path, self.by_id_dir), "missing")
        try:
            self._serial = serial.Serial(
                str(target),
                self.baud,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=0,
                write_timeout=1.0,
                exclusive=True,
            )
        except serial.SerialException as exc:
            raise PortError(*_explain_open_error(target, exc)) from None
        except OSError as exc:  # termios on something that is not a tty
            raise PortError(f"serial port {target}: {exc.strerror or exc}") from None
        self.device = target.resolve()
        self.opened += 1

    def read(self, timeout: float) -> bytes:
        """What arrives within `timeout` seconds (returns as soon as anything does)."""
        ser = self._need()
        try:
            if ser.timeout != timeout:  # each change reconfigures the tty (~30 us)
                ser.timeout = timeout
            first = ser.read(1)
            if not first:
                return b""
            waiting = ser.in_waiting  # already buffered: read(waiting) does not wait
            return first + (ser.read(waiting) if waiting else b"")
        except (serial.SerialException, OSError) as exc:
            self._lose()
            raise PortLost(
                f"serial port {self.device or self.path} lost (unplugged?): {exc}"
            ) from None

    def write(self, data: bytes) -> None:
        ser = self._need()
        try:
            ser.write(data)
        except serial.SerialTimeoutException:
            raise PortError(f"serial port {self.device}: write timed out (flow control?)") from None
        except (serial.SerialException, OSError) as exc:
            self._lose()
            raise PortLost(f"serial port {self.device or self.path} lost: {exc}") from None

    def still_there(self) -> bool:
        """False when the configured path no longer leads to the device we have open."""
        if self._serial is None or self.device is None:
            return False
        target = resolve(self.path, self.by_id_dir)
        try:
            return target.resolve(strict=True) == self.device
        except OSError:
            return False

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError):
                pass

    def _need(self) -> serial.Serial:
        if self._serial is None:
            raise PortLost(f"serial port {self.path} is not open")
        return self._serial

    def _lose(self) -> None:
        self.lost += 1
        self.close()


def _explain_open_error(target: Path, exc: serial.SerialException) -> tuple[str, str]:
    code = exc.errno
    text = str(exc)
    if code == errno.EACCES:
        return (
            f"serial port {target}: permission denied; add the gateway's user to the "
            "`dialout` group (or fix the udev rule)",
            "permission",
        )
    if code in (errno.EBUSY, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return (
            f"serial port {target}: in use by another program (the gateway opens it exclusively)",
            "busy",
        )
    if code == errno.ENOENT:
        return f"serial port {target}: not found; is the adapter plugged in?", "missing"
    return f"serial port {target}: cannot open: {text}", "error"


class Reconnector:
    """When to try reopening a lost port: the one backoff (protocol/retry.py) as a deadline, for
    read loops that poll instead of sleeping."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.backoff = Backoff(first_s, max_s)
        self.next_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def failed(self) -> None:
        self.next_at = time.monotonic() + self.backoff.next()

    def succeeded(self) -> None:
        self.backoff.reset()
        self.next_at = 0.0


class PortPipeline(Pipeline):
    """A pipeline that owns one serial port (a node line or a Modbus bus). While the port is
    missing, busy or lost, that is one `port` fault event, cleared when the port is back."""

    def __init__(self, ctx: Context, settings: PortSettings, readings: ReadingGate) -> None:
        super().__init__(f"serial-{settings.name}", ctx)
        self.settings = settings
        self.readings = readings
        self._port_fault = False

    def _port_up(self, where: str) -> None:
        self.set_state("ok", where)
        if self._port_fault:  # the flag changes only once the event is durable (NotAccepted)
            self.ctx.emit("fault", self.settings.name, {"active": False, "code": faults.PORT_FAULT})
            self._port_fault = False

    def _port_down(self, why: str, reason: str) -> None:
        self.set_state("degraded", why)
        if not self._port_fault:
            self.ctx.emit(
                "fault",
                self.settings.name,
                {"active": True, "code": faults.PORT_FAULT, "reason": reason},
            )
            self._port_fault = True
