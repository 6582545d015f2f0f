"""`wardgate serial ...`: look at a serial line the way the gateway does (commissioning aid)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serial", help="fire-sensor serial lines: watch a node, list profiles")
    ssub = p.add_subparsers(dest="serial_command", metavar="ACTION", required=True)
    m = ssub.add_parser("monitor", help="decode node-protocol frames on a port and print them")
    m.add_argument("--port", required=True, help="device path or /dev/serial/by-id name")
    m.add_argument("--baud", type=int, default=115200)
    m.add_argument("--ack", action="store_true", help="acknowledge alarms/faults like a gateway")
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
    seq = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            for msg in decoder.feed(port.read(0.2)):
                print(json.dumps(msg.to_dict()), flush=True)
                if args.ack and msg.needs_ack:
                    port.write(
                        np.encode(
                            np.Message(np.ACK, msg.node, seq, {"acked": msg.seq, "status": "ok"})
                        )
                    )
                    seq = np.next_seq(seq)
    except PortError as exc:
        print(f"wardgate serial monitor: {exc}", file=sys.stderr)
        return 1
    finally:
        port.close()
        print(json.dumps({"counters": decoder.counters()}), file=sys.stderr)
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from sensor_drivers.modbus_profile import PROFILE_DIR, load_profile

    for path in sorted(PROFILE_DIR.glob("*.toml")):
        profile = load_profile(path.stem)
        alarms = ", ".join(a.cause + (f" L{a.level}" if a.level else "") for a in profile.alarms)
        print(f"{path.stem:12} {profile.description}  [alarms: {alarms}]")
    return 0
