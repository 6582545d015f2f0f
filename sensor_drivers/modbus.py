"""Modbus RTU detectors on an RS-485 bus: one pipeline per bus, polling every unit id on it.

The Modbus stack is pymodbus (its synchronous serial client: framing, CRC, retries); this module
only decides what to read (from the device's profile), and turns what it reads into events. A
device that stops answering, answers with a bad CRC, or with a Modbus exception is a fault after
`fail_after` polls in a row, restored by its next good answer; it never stops the bus.

The accept contract (edge/pipeline.py): a device's alarm, fault and comm-fault state changes only
after `emit` committed the event; when `emit` raises `NotAccepted` the state stays as it was and
the next poll, still seeing the same condition, emits it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from edge.pipeline import Context, NotAccepted
from protocol import faults
from sensor_drivers.config import ModbusDevice, PortSettings
from sensor_drivers.modbus_profile import Flag, Profile, load_profile
from sensor_drivers.port import PortPipeline, Reconnector, describe_missing, resolve
from sensor_drivers.readings import ReadingGate

MAX_REGISTERS = 125  # per read request (Modbus limit)
MAX_BITS = 2000


class PollError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Device:
    """One unit id: its profile, what was last read, and which alarms/faults are up."""

    def __init__(self, settings: ModbusDevice, profile: Profile) -> None:
        self.settings = settings
        self.unit = settings.unit
        self.source = settings.source
        self.profile = profile
        self.plan = _read_plan(profile)
        self.failures = 0
        self.comm_fault: str | None = None
        self.alarm_up: dict[int, bool] = {}
        self.fault_up: dict[int, bool] = {}
        self.values: dict[str, float] = {}
        self.polls = 0
        self.errors: dict[str, int] = {}


def _read_plan(profile: Profile) -> dict[str, tuple[int, int]]:
    """table -> (first address, count): one request per table per poll."""
    spans: dict[str, list[int]] = {}
    for p in profile.points:
        spans.setdefault(p.table, []).extend([p.address, p.address + p.words - 1])
    for flag in [*profile.alarms, *profile.faults]:
        if flag.table is not None and flag.address is not None:
            spans.setdefault(flag.table, []).append(flag.address)
    plan = {}
    for table, addresses in spans.items():
        first, last = min(addresses), max(addresses)
        limit = MAX_BITS if table in ("discrete", "coil") else MAX_REGISTERS
        if last - first + 1 > limit:
            raise ValueError(f"profile spans {last - first + 1} {table} addresses; max {limit}")
        plan[table] = (first, last - first + 1)
    return plan


class ModbusPortPipeline(PortPipeline):
    def __init__(self, ctx: Context, settings: PortSettings, readings: ReadingGate) -> None:
        super().__init__(ctx, settings, readings)
        self.devices = [Device(d, load_profile(d.profile)) for d in settings.devices]
        self.client: Any = None
        self._commands: queue.Queue[tuple[str, list[str] | None, dict, threading.Event]] = (
            queue.Queue()
        )
        self.crc_errors = 0  # polls answered with bytes that were no valid frame
        self._rx_seen = False
        self.alarms = 0
        self.not_accepted = 0
        self._storage_trouble = False
        # pymodbus logs every unanswered request as an error; here a silent detector is a
        # fault event (and one warning) instead of a line a second in the journal
        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

    # --- connection --------------------------------------------------------------------------
    def _client(self) -> Any:
        from pymodbus.client import ModbusSerialClient

        s = self.settings
        return ModbusSerialClient(
            str(resolve(s.path)),
            baudrate=s.baud,
            parity=s.parity,
            stopbits=s.stopbits,
            timeout=s.timeout_s,
            retries=s.retries,
            name=self.name,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._rx_seen = True  # something answered; if no valid frame came of it, it was noise
        return data

    def _connect(self) -> bool:
        target = resolve(self.settings.path)
        if not target.exists():
            self._port_down(describe_missing(self.settings.path), "missing")
            return False
        self.client = self._client()
        if not self.client.connect():
            self.client = None
            self._port_down(
                f"serial port {target}: cannot open (in use, or no permission?)", "error"
            )
            return False
        self._port_up(str(target))
        return True

    # --- loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        reconnect = Reconnector(self.settings.reconnect_s, self.settings.reconnect_max_s)
        while not stop.is_set():
            started = time.monotonic()
            if self.client is None or not self.client.connected:
                if reconnect.due() and self._connect():
                    reconnect.succeeded()
                else:
                    if reconnect.due():
                        reconnect.failed()
                    self._serve_commands(stop, 0.05)
                    continue
            for device in self.devices:
                if stop.is_set():
                    break
                try:
                    self._poll(device)
                except NotAccepted as exc:  # state unchanged: the next poll emits it again
                    self.not_accepted += 1
                    if not self._storage_trouble:
                        self._storage_trouble = True
                        self.set_state("degraded", f"events not accepted: {exc}"[:200])
                else:
                    if self._storage_trouble:
                        self._storage_trouble = False
                        self.set_state("ok", "events accepted again")
                self._serve_commands(stop, 0)
            # pymodbus closes the port after several unanswered requests in a row; the next
            # round reopens it, and only a port that cannot be reopened is a port fault.
            wait = self.settings.poll_s - (time.monotonic() - started)
            self._serve_commands(stop, max(0.0, wait))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _poll(self, device: Device) -> None:
        self._rx_seen = False
        try:
            raw = self._read(device)
        except PollError as exc:
            code = exc.code
            if code == faults.TIMEOUT and self._rx_seen:
                code = faults.CRC  # bytes came back, but no frame whose CRC checks
                self.crc_errors += 1
            self._failed(device, code, str(exc))
            return
        device.polls += 1
        device.failures = 0
        if device.comm_fault is not None:
            self.log.info("%s (unit %d) answers again", device.source, device.unit)
            self.ctx.emit("fault", device.source, {"active": False, "code": device.comm_fault})
            device.comm_fault = None
            self.readings.forget(device.source + "/")
        self._evaluate(device, raw)

    def _read(self, device: Device) -> dict[str, list[Any]]:
        from pymodbus.exceptions import ModbusException

        calls = {
            "input": self.client.read_input_registers,
            "holding": self.client.read_holding_registers,
            "discrete": self.client.read_discrete_inputs,
            "coil": self.client.read_coils,
        }
        out: dict[str, list[Any]] = {}
        for table, (first, count) in device.plan.items():
            try:
                rr = calls[table](first, count=count, device_id=device.unit)
            except ModbusException as exc:
                raise PollError(faults.TIMEOUT, f"unit {device.unit}: {exc}") from None
            except (OSError, ValueError) as exc:
                raise PollError(faults.PORT_FAULT, f"unit {device.unit}: {exc}") from None
            if rr.isError():
                code = getattr(rr, "exception_code", None)
                raise PollError(faults.EXCEPTION, f"unit {device.unit}: Modbus exception {code}")
            values = rr.registers if table in ("input", "holding") else rr.bits[:count]
            if len(values) < count:
                raise PollError(
                    faults.SHORT_REPLY, f"unit {device.unit}: {len(values)} of {count} values"
                )
            out[table] = list(values)
        return out

    def _failed(self, device: Device, code: str, detail: str) -> None:
        device.failures += 1
        device.errors[code] = device.errors.get(code, 0) + 1
        self.log.debug("%s: %s", device.source, detail)
        if device.failures >= self.settings.fail_after and device.comm_fault is None:
            self.ctx.emit("fault", device.source, {"active": True, "code": code})
            device.comm_fault = code  # only once the fault is durable
            self.log.warning("%s (unit %d) fault: %s", device.source, device.unit, detail)

    # --- values into events ----------------------------------------------------------------------
    def _evaluate(self, device: Device, raw: dict[str, list[Any]]) -> None:
        profile = device.profile
        for point in profile.points:
            first = device.plan[point.table][0]
            regs = raw[point.table][point.address - first : point.address - first + point.words]
            value = self._convert(regs, point.type, profile.word_order) * point.scale
            value = round(value, 3)
            device.values[point.name] = value
            source = f"{device.source}/{point.name}"
            if point.report and self.readings.check(source, value, point.deadband):
                data: dict[str, Any] = {"value": value}
                if point.unit:
                    data["unit"] = point.unit
                try:
                    self.ctx.emit("reading", source, data)
                except NotAccepted:
                    self.readings.forget(source)  # not reported after all
                    raise
        for i, alarm in enumerate(profile.alarms):
            up = self._flag(device, alarm, raw, device.alarm_up.get(i, False))
            if up and not device.alarm_up.get(i, False):
                data = {"cause": alarm.cause}
                if alarm.level is not None:
                    data["level"] = alarm.level
                if alarm.value_point is not None:
                    data["value"] = device.values[alarm.value_point]
                self.alarms += 1
                self.ctx.emit("alarm", f"{device.source}/{alarm.name}", data)
            device.alarm_up[i] = up
        for i, fault in enumerate(profile.faults):
            up = self._flag(device, fault, raw, device.fault_up.get(i, False))
            if up != device.fault_up.get(i, False):
                self.ctx.emit(
                    "fault", f"{device.source}/{fault.name}", {"active": up, "code": fault.code}
                )
            device.fault_up[i] = up

    def _convert(self, regs: list[int], kind: str, word_order: str) -> float:
        types = self.client.DATATYPE
        data_type = {
            "uint16": types.UINT16,
            "int16": types.INT16,
            "uint32": types.UINT32,
            "int32": types.INT32,
            "float32": types.FLOAT32,
        }[kind]
        return float(self.client.convert_from_registers(regs, data_type, word_order=word_order))

    @staticmethod
    def _flag(device: Device, flag: Flag, raw: dict[str, list[Any]], was_up: bool) -> bool:
        if flag.point is not None and flag.above is not None:
            value = device.values[flag.point]
            return value > flag.above - flag.hysteresis if was_up else value >= flag.above
        assert flag.table is not None and flag.address is not None
        word = raw[flag.table][flag.address - device.plan[flag.table][0]]
        if flag.bit is None:
            return bool(word)
        return bool(int(word) >> flag.bit & 1)

    # --- commands ------------------------------------------------------------------------------
    def command(self, name: str, sources: list[str] | None, timeout: float = 3.0) -> dict:
        """Reset or silence matching devices; runs in the polling thread (one bus, one master)."""
        result: dict[str, str] = {}
        done = threading.Event()
        self._commands.put((name, sources, result, done))
        if not done.wait(timeout):
            wanted = [d.source for d in self._targets(sources)]
            return {source: "no answer" for source in wanted}
        return result

    def _targets(self, sources: list[str] | None) -> list[Device]:
        if sources is None:
            return self.devices
        return [d for d in self.devices if any(s.split("/")[0] == d.source for s in sources)]

    def _serve_commands(self, stop: threading.Event, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                name, sources, result, done = self._commands.get(
                    timeout=max(0.0, min(0.05, deadline - time.monotonic()))
                )
            except queue.Empty:
                if stop.is_set() or time.monotonic() >= deadline:
                    return
                continue
            for device in self._targets(sources):
                result[device.source] = self._write_command(device, name)
            done.set()

    def _write_command(self, device: Device, name: str) -> str:
        from pymodbus.exceptions import ModbusException

        action = device.profile.reset if name == "reset" else device.profile.silence
        if action is None:
            return f"profile has no {name}"
        if (self.client is None or not self.client.connected) and not self._connect():
            return "port closed"
        try:
            if action.table == "coil":
                rr = self.client.write_coil(
                    action.address, bool(action.value), device_id=device.unit
                )
            else:
                rr = self.client.write_register(action.address, action.value, device_id=device.unit)
        except (ModbusException, OSError) as exc:
            return f"failed: {exc}"
        if rr.isError():
            return f"Modbus exception {getattr(rr, 'exception_code', '?')}"
        return "ok"  # the detector clears its latch; one still up after that is not new

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["port"] = self.settings.path
        out["crc_errors"] = self.crc_errors
        out["devices"] = {
            d.source: {
                "unit": d.unit,
                "polls": d.polls,
                "errors": dict(d.errors),
                "fault": d.comm_fault,
                "values": dict(d.values),
            }
            for d in self.devices
        }
        return out
