"""The gateway side of the node protocol: one pipeline per UART with sensor nodes on it.

What a node says becomes events: alarms at once (acknowledged to the node only after the event is
durable, so an alarm is never lost between the two), faults when they appear and clear, and
readings by exception. A node that goes quiet for `silent_after_s` is a fault ("silent"); it is
restored by its next frame. A lost port is a fault of its own, and is reopened with backoff.

The accept contract (edge/pipeline.py): what the driver remembers about a node (sequence numbers
seen, latched alarms, active faults) changes only after `emit` committed the event, and a frame
is acknowledged only then. When `emit` raises `NotAccepted` the frame is neither remembered nor
acknowledged: the node repeats it (alarms and faults without end) and it becomes an event as
soon as the outbox takes it again, exactly once.

Faults are reconciled with the node's heartbeat (its `faults` bitmask, one bit per sensor, bit 31
the node itself): a fault the node no longer reports is restored even if its clearing frame was
lost, and after a node reboot the faults of the previous boot that the new boot does not report
once its inputs have settled (`REBOOT_SETTLE_S` of uptime) are restored.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge.pipeline import Context, NotAccepted
from protocol import faults
from protocol import node_protocol as np
from protocol.names import is_short_name, node_label
from sensor_drivers.config import PortSettings
from sensor_drivers.port import PortError, PortLost, PortPipeline, Reconnector, SerialPort
from sensor_drivers.readings import ReadingGate

UNITS = {"smoke": "%", "heat": "degC"}
#: a repeat of an acknowledged message arrives within seconds; older sequence numbers are new
DUPLICATE_WINDOW_S = 60.0
HELLO_REQUEST_EVERY_S = 5.0
COMMAND_RETRY_S = 0.2
COMMAND_EXPIRY_S = 5.0  # a command not acknowledged by then is given up
READ_SLICE_S = 0.05
#: node uptime after which a rebooted node's heartbeat shows its line faults (inputs debounced)
REBOOT_SETTLE_S = 2
NODE_FAULT_BIT = 31  # heartbeat `faults`: a node-level fault (sensor index 255) is active


class NodeState:
    """What the gateway knows about one node."""

    def __init__(self, node: int, now: float) -> None:
        self.node = node
        self.label = node_label(node)
        self.last_seen: float | None = None
        self.watch_from = now  # silence is measured from here until the first frame
        self.silent = False
        self.boot_id: int | None = None
        self.firmware = ""
        self.heartbeat_s: int | None = None
        self.sensors: list[tuple[str, str]] = []  # (kind, name) by index
        self.recent: dict[int, float] = {}  # acked-type seq -> when first seen
        self.alarmed: set[int] = set()  # sensor indexes whose latched alarm was emitted
        self.faults: set[tuple[int, str]] = set()  # (sensor index, code) active
        self.stale_faults: set[tuple[int, str]] = set()  # active before a reboot, unconfirmed
        self.hello_asked_at = -1e9
        self.uptime_s: int | None = None
        self.node_crc_errors = 0
        self.frames = 0
        self.duplicates = 0

    def sensor_source(self, index: int, name: str = "") -> str:
        """`n07/smoke`: the name the frame carries, else the one from the hello."""
        if index == np.NODE_SENSOR:
            return self.label
        if name and is_short_name(name):
            return f"{self.label}/{name}"
        if index < len(self.sensors):
            return f"{self.label}/{self.sensors[index][1]}"
        return f"{self.label}/s{index}"

    def sensor_kind(self, index: int) -> str | None:
        return self.sensors[index][0] if index < len(self.sensors) else None

    def is_duplicate(self, seq: int, now: float) -> bool:
        """A frame acted on (and acknowledged) within the duplicate window."""
        for old in [s for s, t in self.recent.items() if now - t > DUPLICATE_WINDOW_S]:
            del self.recent[old]
        return seq in self.recent

    def remember(self, seq: int, now: float) -> None:
        """Only once what the frame said is durable: a repeat is then a duplicate."""
        self.recent[seq] = now

    def rebooted(self) -> None:
        self.recent.clear()
        self.alarmed.clear()
        # its faults now stand until the new boot confirms or contradicts them
        self.stale_faults |= self.faults


class _PendingCommand:
    def __init__(self, node: int, seq: int, command: str) -> None:
        self.node = node
        self.seq = seq
        self.command = command
        self.frame = np.encode(np.Message(np.COMMAND, node, seq, {"command": command}))
        self.sent_at = time.monotonic()
        self.expires_at = self.sent_at + COMMAND_EXPIRY_S
        self.status: str | None = None
        self.done = threading.Event()


class NodePortPipeline(PortPipeline):
    def __init__(self, ctx: Context, settings: PortSettings, readings: ReadingGate) -> None:
        super().__init__(ctx, settings, readings)
        self.port = SerialPort(settings.path, settings.baud, settings.parity, settings.stopbits)
        self.decoder = np.Decoder()
        self.nodes: dict[int, NodeState] = {}
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._seq = 0
        self._pending: dict[tuple[int, int], _PendingCommand] = {}
        self.acks_sent = 0
        self.alarms = 0
        self.not_accepted = 0  # frames left unacknowledged because emit() refused their event
        self._storage_trouble = False
        started = time.monotonic()
        for node in settings.nodes:
            self.nodes[node] = NodeState(node, started)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        reconnect = Reconnector(self.settings.reconnect_s, self.settings.reconnect_max_s)
        while not stop.is_set():
            if not self.port.is_open:
                if not reconnect.due():
                    self._supervise(time.monotonic())
                    stop.wait(READ_SLICE_S)
                    continue
                try:
                    self.port.open()
                except PortError as exc:
                    reconnect.failed()
                    self._port_down(str(exc), exc.reason)
                    continue
                reconnect.succeeded()
                self._on_port_open()
            try:
                data = self.port.read(READ_SLICE_S)
                if data:
                    for message in self.decoder.feed(data):
                        try:
                            self._handle(message)
                        except NotAccepted as exc:
                            self._not_accepted(message, exc)
                elif not self.port.still_there():
                    self.port.close()
                    raise PortLost(f"serial port {self.settings.path} was replaced or removed")
                self._resend_commands()
            except PortLost as exc:
                self.port.close()
                reconnect.failed()
                self._port_down(str(exc), exc.reason)
            try:
                self._supervise(time.monotonic())
            except NotAccepted as exc:
                self._not_accepted(None, exc)

    def _not_accepted(self, msg: np.Message | None, exc: NotAccepted) -> None:
        """Nothing recorded, nothing acknowledged: the node repeats the frame."""
        self.not_accepted += 1
        if not self._storage_trouble:
            self._storage_trouble = True
            self.set_state("degraded", f"events not accepted: {exc}"[:200])
        what = msg.type_name if msg is not None else "supervision"
        self.log.debug("%s not acknowledged: %s", what, exc)

    def close(self) -> None:
        self.port.close()
        for pending in list(self._pending.values()):
            pending.done.set()

    def _on_port_open(self) -> None:
        self._port_up(f"{self.port.device}")
        self.decoder = np.Decoder()  # a half frame from before the loss means nothing now
        now = time.monotonic()
        for state in list(self.nodes.values()):
            # whoever is there: say who you are and send your values (pyserial dropped
            # whatever arrived before the port was open)
            state.hello_asked_at = now
            self._send_command(state.node, "hello")

    # --- frames from nodes ---------------------------------------------------------------------
    def _node(self, node: int, now: float) -> NodeState:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = NodeState(node, now)
        return state

    def _handle(self, msg: np.Message) -> None:
        now = time.monotonic()
        with self._state_lock:
            state = self._node(msg.node, now)
        state.frames += 1
        state.last_seen = now
        if state.silent:
            self.ctx.emit("fault", state.label, {"active": False, "code": faults.SILENT})
            state.silent = False
        if msg.type == np.HELLO and msg.fields["boot_id"] != state.boot_id:
            if state.boot_id is not None:
                self.log.info("%s restarted (boot id %08x)", state.label, msg.fields["boot_id"])
            state.rebooted()
        if msg.needs_ack and state.is_duplicate(msg.seq, now):
            state.duplicates += 1
            self._ack(msg)  # our ack was lost: say it again, but do not act twice
            return
        handler = getattr(self, f"_on_{msg.type_name}", None)
        if handler is not None:
            handler(state, msg)  # NotAccepted: not remembered, not acknowledged
        if self._storage_trouble:
            self._storage_trouble = False
            self.set_state("ok", "events accepted again")
        if msg.needs_ack:
            state.remember(msg.seq, now)
            self._ack(msg)
        if state.boot_id is None and now - state.hello_asked_at > HELLO_REQUEST_EVERY_S:
            state.hello_asked_at = now
            self._send_command(state.node, "hello")

    def _on_hello(self, state: NodeState, msg: np.Message) -> None:
        f = msg.fields
        state.boot_id = f["boot_id"]
        state.firmware = f["firmware"]
        state.heartbeat_s = f["heartbeat_s"]
        state.sensors = [(kind, name) for kind, name in f["sensors"]]
        self.log.info(
            "%s: %s, sensors %s", state.label, state.firmware, [n for _, n in state.sensors]
        )

    def _on_alarm(self, state: NodeState, msg: np.Message) -> None:
        f = msg.fields
        if f["sensor"] in state.alarmed:
            state.duplicates += 1  # already reported from this latch (e.g. via a heartbeat)
            return
        data: dict[str, Any] = {"cause": f["cause"]}
        if f["cause"] not in ("flame", "call_point"):
            data["value"] = human_value(f["value"])
        self.ctx.emit("alarm", state.sensor_source(f["sensor"], f["name"]), data)
        state.alarmed.add(f["sensor"])  # latched only once durable
        self.alarms += 1

    def _on_fault(self, state: NodeState, msg: np.Message) -> None:
        f = msg.fields
        key = (f["sensor"], f["code"])
        if f["active"] and f["sensor"] != np.NODE_SENSOR:
            # a sensor line has one state: another code still up for it is over (its clearing
            # frame came from the previous boot, or never)
            for other in sorted(k for k in state.faults if k[0] == key[0] and k != key):
                self._restore_fault(state, other, "superseded")
        state.stale_faults.discard(key)  # this boot reports it: confirmed (or cleared below)
        if f["active"] == (key in state.faults):
            return
        source = state.sensor_source(f["sensor"], f["name"])
        self.ctx.emit("fault", source, {"active": f["active"], "code": f["code"]})
        if f["active"]:
            state.faults.add(key)
        else:
            state.faults.discard(key)
            self.readings.forget(source)

    def _restore_fault(self, state: NodeState, key: tuple[int, str], via: str) -> None:
        source = state.sensor_source(key[0])
        self.ctx.emit("fault", source, {"active": False, "code": key[1], "via": via})
        state.faults.discard(key)
        state.stale_faults.discard(key)
        self.readings.forget(source)

    def _reconcile_faults(self, state: NodeState, bits: int, uptime_s: int) -> None:
        """Restore the faults the node's heartbeat no longer reports."""
        for key in sorted(state.faults):
            index = key[0]
            bit = NODE_FAULT_BIT if index == np.NODE_SENSOR else index
            reported = bit < 32 and bool(bits >> bit & 1)
            if key in state.stale_faults:
                if uptime_s < REBOOT_SETTLE_S:
                    continue  # just rebooted: its inputs are still being debounced
                if reported:
                    state.stale_faults.discard(key)  # still there after the reboot
                    continue
            elif reported or bit >= 32:
                continue
            self._restore_fault(state, key, "heartbeat")

    def _on_reading(self, state: NodeState, msg: np.Message) -> None:
        for index, raw in msg.fields["values"]:
            source = state.sensor_source(index)
            value = human_value(raw)
            kind = state.sensor_kind(index)
            deadband = {"smoke": 2.0, "heat": 1.0}.get(kind or "")
            if self.readings.check(source, value, deadband):
                data: dict[str, Any] = {"value": value}
                if kind in UNITS:
                    data["unit"] = UNITS[kind]
                try:
                    self.ctx.emit("reading", source, data)
                except NotAccepted:
                    self.readings.forget(source)  # not reported after all
                    raise

    def _on_heartbeat(self, state: NodeState, msg: np.Message) -> None:
        f = msg.fields
        if state.uptime_s is not None and f["uptime_s"] < state.uptime_s:
            self.log.info("%s restarted (uptime went back)", state.label)
            state.rebooted()
        state.uptime_s = f["uptime_s"]  # before any emit: a repeat is not another reboot
        state.node_crc_errors = f["crc_errors"]
        latched = f["alarms"]
        for index in range(32):
            bit = latched >> index & 1
            if bit and index not in state.alarmed:
                # the alarm frame itself was lost: the latch in the heartbeat still tells
                cause = state.sensor_kind(index) or "unknown"
                self.ctx.emit(
                    "alarm", state.sensor_source(index), {"cause": cause, "via": "heartbeat"}
                )
                state.alarmed.add(index)
                self.alarms += 1
            elif not bit:
                state.alarmed.discard(index)
        self._reconcile_faults(state, f["faults"], f["uptime_s"])

    def _on_ack(self, state: NodeState, msg: np.Message) -> None:
        pending = self._pending.get((state.node, msg.fields["acked"]))
        if pending is not None:
            if pending.command == "reset":
                state.alarmed.clear()  # the latches are gone: a new alarm is a new alarm
            pending.status = msg.fields["status"]
            pending.done.set()

    def _ack(self, msg: np.Message) -> None:
        ack = np.Message(np.ACK, msg.node, self._next_seq(), {"acked": msg.seq, "status": "ok"})
        try:
            self._write(np.encode(ack))
            self.acks_sent += 1
        except PortError as exc:
            self.log.warning("could not acknowledge %s: %s", msg.type_name, exc)

    # --- supervision ---------------------------------------------------------------------------
    def _supervise(self, now: float) -> None:
        limit = self.settings.silent_after_s
        with self._state_lock:
            states = list(self.nodes.values())
        for state in states:
            since = state.last_seen if state.last_seen is not None else state.watch_from
            if not state.silent and now - since > limit:
                self.ctx.emit(
                    "fault", state.label, {"active": True, "code": faults.SILENT, "after_s": limit}
                )
                state.silent = True

    # --- commands to nodes ---------------------------------------------------------------------
    def _next_seq(self) -> int:
        with self._write_lock:
            seq = self._seq
            self._seq = np.next_seq(seq)
        return seq

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            self.port.write(frame)

    def _send_command(self, node: int, command: str) -> _PendingCommand:
        pending = _PendingCommand(node, self._next_seq(), command)
        self._pending[(node, pending.seq)] = pending
        try:
            self._write(pending.frame)
        except PortError:
            pass  # resent by the loop once the port is back, until the caller gives up
        return pending

    def _resend_commands(self) -> None:
        now = time.monotonic()
        for key, pending in list(self._pending.items()):
            if pending.done.is_set() or now > pending.expires_at:
                pending.done.set()
                self._pending.pop(key, None)
            elif now - pending.sent_at >= COMMAND_RETRY_S:
                pending.sent_at = now
                try:
                    self._write(pending.frame)
                except PortError:
                    return

    def command(self, name: str, sources: list[str] | None, timeout: float = 3.0) -> dict:
        """Send `reset` or `silence` to the nodes matching `sources` (all when None)."""
        with self._state_lock:
            targets = [
                s
                for s in self.nodes.values()
                if sources is None or any(src.split("/")[0] == s.label for src in sources)
            ]
        if not targets:
            return {}
        if not self.port.is_open:
            return {s.label: "port closed" for s in targets}
        waits = [(s.label, self._send_command(s.node, name)) for s in targets]
        deadline = time.monotonic() + timeout
        out = {}
        for label, pending in waits:
            pending.done.wait(max(0.0, deadline - time.monotonic()))
            out[label] = pending.status or "no answer"
            pending.done.set()
        return out

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["port"] = str(self.port.device or self.settings.path)
        out["opened"] = self.port.opened
        out["lost"] = self.port.lost
        out["decoder"] = self.decoder.counters()
        out["acks_sent"] = self.acks_sent
        out["not_accepted"] = self.not_accepted
        now = time.monotonic()
        out["nodes"] = {
            s.label: {
                "firmware": s.firmware,
                "seen_s_ago": None if s.last_seen is None else round(now - s.last_seen, 1),
                "silent": s.silent,
                "frames": s.frames,
                "duplicates": s.duplicates,
                "node_crc_errors": s.node_crc_errors,
                "alarms_latched": sorted(s.sensor_source(i) for i in s.alarmed),
                "faults": sorted(f"{s.sensor_source(i)}:{c}" for i, c in s.faults),
            }
            for s in list(self.nodes.values())
        }
        return out


def human_value(raw: int) -> float:
    """A wire value (hundredths of the sensor's unit, node_protocol.VALUE_SCALE) in its unit."""
    return round(raw / np.VALUE_SCALE, 2)
