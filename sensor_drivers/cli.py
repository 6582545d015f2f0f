"""`wardgate serial ...`: look at a serial line the way the gateway does (commissioning aid)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serial", help="fire-sensor serial lines: watch a node, list profiles")
    ssub = p.add_subparsers(dest="serial_command", metavar="ACTION", required=True)
    m = ssub.add_parser(
        "monitor",
        help="decode node-protocol frames on a port and print them in human units, by name",
    )
    m.add_argument("--port", required=True, help="device path or /dev/serial/by-id name")
    m.add_argument("--baud", type=int, default=115200)
    m.add_argument("--ack", action="store_true", help="acknowledge alarms/faults like a gateway")
    m.add_argument(
        "--passive",
        action="store_true",
        help="never write to the line (by default each node is asked once for its hello, "
        "which names its sensors, and its values now)",
    )
    m.add_argument("--json", action="store_true", help="one JSON object a frame, wire values")
    m.add_argument("--seconds", type=float, default=0, help="stop after this long; 0 = never")
    m.set_defaults(func=_monitor)
    pr = ssub.add_parser("profiles", help="list the built-in Modbus register maps")
    pr.set_defaults(func=_profiles)


def _monitor(args: argparse.Namespace) -> int:
    from protocol import node_protocol as np
    from sensor_drivers.port import PortError, SerialPort

    port = SerialPort(args.port, args.baud)
    try:
        port.open()
    except PortError as exc:
        print(f"wardgate serial monitor: {exc}", file=sys.stderr)
        return 2
    decoder = np.Decoder()
    names = FrameText()
    seq = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None

    def send(node: int, mtype: int, fields: dict) -> None:
        nonlocal seq
        port.write(np.encode(np.Message(mtype, node, seq, fields)))
        seq = np.next_seq(seq)

    try:
        while deadline is None or time.monotonic() < deadline:
            for msg in decoder.feed(port.read(0.2)):
                if args.json:
                    print(json.dumps(msg.to_dict()), flush=True)
                else:
                    print(f"{time.strftime('%H:%M:%S')} {names.text(msg)}", flush=True)
                if args.ack and msg.needs_ack:
                    send(msg.node, np.ACK, {"acked": msg.seq, "status": "ok"})
                if not args.passive and names.wants_hello(msg):
                    send(msg.node, np.COMMAND, {"command": "hello"})
    except PortError as exc:
        print(f"wardgate serial monitor: {exc}", file=sys.stderr)
        return 1
    finally:
        port.close()
        print(json.dumps({"counters": decoder.counters()}), file=sys.stderr)
    return 0


class FrameText:
    """Node frames as one line of text each: values in their units, sensors by name.

    Names come from each node's hello (its sensor list); alarms and faults carry their own.
    """

    UNITS = {"smoke": "%", "heat": "°C", "heat_ror": "°C/min"}

    def __init__(self) -> None:
        self.sensors: dict[int, list[tuple[str, str]]] = {}  # node -> [(kind, name)] by index
        self.asked: set[int] = set()

    def wants_hello(self, msg) -> bool:
        """True for a node's first frame: ask it, as a gateway that connects does, for its hello
        (its sensors' names) and its values now rather than at its next reading."""
        from protocol import node_protocol as np

        if msg.node in self.asked or msg.node == np.NODE_BROADCAST:
            return False
        if msg.type in (np.ACK, np.COMMAND):
            return False
        self.asked.add(msg.node)
        return True

    def name(self, node: int, index: int, given: str = "") -> str:
        from protocol import node_protocol as np

        if index == np.NODE_SENSOR:
            return "node"
        if given:
            return given
        known = self.sensors.get(node, [])
        return known[index][1] if index < len(known) else f"sensor {index}"

    def value(self, kind_or_cause: str | None, raw: int) -> str:
        from sensor_drivers.node_driver import human_value

        unit = self.UNITS.get(kind_or_cause or "")
        return f"{human_value(raw):.1f} {unit}" if unit else f"{human_value(raw):g}"

    def kind(self, node: int, index: int) -> str | None:
        known = self.sensors.get(node, [])
        return known[index][0] if index < len(known) else None

    def text(self, msg) -> str:
        from protocol import node_protocol as np

        f = msg.fields
        head = f"n{msg.node:02d} {msg.type_name:9}"
        if msg.type == np.HELLO:
            self.sensors[msg.node] = [(k, n) for k, n in f["sensors"]]
            listed = ", ".join(n if n == k else f"{n} ({k})" for k, n in f["sensors"]) or "none"
            return (
                f"{head} {f['firmware']}, heartbeat every {f['heartbeat_s']} s, "
                f"boot {f['boot_id']:08x}; sensors: {listed}"
            )
        if msg.type == np.READING:
            parts = [
                f"{self.name(msg.node, i)} {self.value(self.kind(msg.node, i), raw)}"
                for i, raw in f["values"]
            ]
            return f"{head} " + ", ".join(parts)
        if msg.type == np.ALARM:
            text = f"{head} {self.name(msg.node, f['sensor'], f['name'])}: {f['cause']}"
            if f["cause"] in self.UNITS:
                text += " " + self.value(f["cause"], f["value"])
            return text + f" (seq {msg.seq})"
        if msg.type == np.FAULT:
            state = "active" if f["active"] else "cleared"
            who = self.name(msg.node, f["sensor"], f["name"])
            text = f"{head} {who}: {f['code']} {state}"
            kind = self.kind(msg.node, f["sensor"])
            if kind in self.UNITS and f["code"] not in ("open", "short"):
                text += " at " + self.value(kind, f["value"])
            return text + f" (seq {msg.seq})"
        if msg.type == np.HEARTBEAT:
            bits = {"alarms": f["alarms"], "faults": f["faults"]}
            named = {
                what: ", ".join(
                    self.name(msg.node, np.NODE_SENSOR if i == 31 else i)
                    for i in range(32)
                    if mask >> i & 1
                )
                or "none"
                for what, mask in bits.items()
            }
            silenced = ", sounder silenced" if f["flags"] & np.HEARTBEAT_FLAG_SILENCED else ""
            return (
                f"{head} up {f['uptime_s']} s; latched: {named['alarms']}; "
                f"faults: {named['faults']}{silenced}; crc errors {f['crc_errors']}"
            )
        if msg.type == np.ACK:
            return f"{head} seq {f['acked']}: {f['status']}"
        if msg.type == np.COMMAND:
            return f"{head} {f['command']}"
        return f"{head} {json.dumps(f)}"


def _profiles(args: argparse.Namespace) -> int:
    from sensor_drivers.modbus_profile import PROFILE_DIR, load_profile

    for path in sorted(PROFILE_DIR.glob("*.toml")):
        profile = load_profile(path.stem)
        alarms = ", ".join(a.cause + (f" L{a.level}" if a.level else "") for a in profile.alarms)
        print(f"{path.stem:12} {profile.description}  [alarms: {alarms}]")
    return 0
