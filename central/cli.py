"""`wardgate alarms`: the fire brigade's receiver (central/receiver.py).

Cheap to import: paho and the receiver load inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.cli import EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "alarms",
        help="fire-brigade receiver: live alarms, acknowledgements, gateway liveness",
    )
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file holding the password")
    p.add_argument("--ca", type=Path, help="CA certificate: enables TLS")
    p.add_argument("--cert", type=Path, help="client certificate")
    p.add_argument("--key", type=Path, help="client key")
    p.add_argument("--server-name", help="the name the broker's certificate carries, if not --host")
    p.add_argument("--prefix", default="wg/v1")
    p.add_argument("--district", default="+", help="one district, or + for all")
    p.add_argument("--group", default="brigade", help="shared-subscription group")
    p.add_argument("--name", default="receiver", help="this receiver's id (MQTT client id)")
    p.add_argument("--audit", type=Path, help="append-only audit log (JSON lines)")
    p.add_argument("--webhook", help="POST each alarm and fault as JSON to this URL")
    p.add_argument("--supervision-s", type=float, default=90.0, help="silent gateway after")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, no live view")
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    p.set_defaults(func=cmd_alarms)


def cmd_alarms(args: argparse.Namespace) -> int:
    import signal

    from central.receiver import ReceiverOptions, run_receiver

    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            print(f"wardgate alarms: --password-file: {exc}", file=sys.stderr)
            return EXIT_USAGE
    opts = ReceiverOptions(
        host=args.host,
        port=args.port,
        username=args.username,
        password=password,
        password_file=args.password_file,  # read again on every reconnect
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        server_name=args.server_name,
        prefix=args.prefix,
        district=args.district,
        group=args.group,
        name=args.name,
        audit=args.audit,
        webhook=args.webhook,
        supervision_s=args.supervision_s,
    )

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return run_receiver(opts, json_lines=args.json, duration=args.duration)
