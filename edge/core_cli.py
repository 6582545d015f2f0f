"""Core subcommands: run, check-config, decode, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE
from edge.config import DEFAULT_PATH


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the gateway (as the systemd service does)")
    p.add_argument("--config", type=Path, default=DEFAULT_PATH, help=f"default {DEFAULT_PATH}")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config",
        help="validate a config file and its conf.d drop-ins; exit 3 with each problem",
    )
    p.add_argument("path", type=Path, nargs="?", default=DEFAULT_PATH)
    p.add_argument(
        "--no-files",
        action="store_true",
        help="do not check the files it names (password, TLS): for a config away from its gateway",
    )
    p.add_argument(
        "--show",
        action="store_true",
        help="print the effective config (file + conf.d drop-ins + defaults), each key with "
        "the file:line that set it",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("decode", help="print a wardgate payload (CBOR or JSON) as JSON")
    p.add_argument("file", nargs="?", default="-", help="a payload file, or - for stdin")
    p.set_defaults(func=cmd_decode)

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

    p = sub.add_parser(
        "demo",
        help="live demo on built-in defaults: private broker, gateway, live view of what arrives",
    )
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--workdir", type=Path, default=None, help="keep demo files here")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    p.add_argument(
        "--without",
        action="append",
        choices=("camera", "node"),
        default=[],
        help="leave a part out on purpose (otherwise a missing part ends the demo with exit 1)",
    )
    p.add_argument(
        "--check", action="store_true", help="only check that every promised part is here"
    )
    p.set_defaults(func=cmd_demo)


def _load_config(path: Path):
    from edge import config  # noqa: F401  (pydantic is imported only for commands that need it)

    try:
        return config.load(path)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge import config

    result = config.check(args.path, files=not args.no_files)
    for line in result.problems + result.warnings:
        print(line, file=sys.stderr)
    cfg = result.config
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.path}: ok (gateway {cfg.gateway.id}, topics under {cfg.topics.base}/)")
    drop_ins = [layer.file for layer in result.layers[1:]]
    if drop_ins:
        print(f"  merged with {len(drop_ins)} drop-in(s): {', '.join(drop_ins)}")
    if args.show:
        for line in config.effective_lines(cfg, result.origins):
            print(line)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from edge.runtime import Gateway
    from edge.uplink.outbox import OutboxError

    cfg = _load_config(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if not getattr(args, "log_level_set", False):  # -v / --log-level win over the config
        logging.getLogger().setLevel(cfg.logging.level.upper())
    try:
        gateway = Gateway(cfg, config_path=args.config)
    except (OutboxError, OSError) as exc:
        print(f"wardgate run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return gateway.run_forever()


def cmd_decode(args: argparse.Namespace) -> int:
    from edge.events import decode_any

    if args.file == "-":
        payload = sys.stdin.buffer.read()
    else:
        try:
            payload = Path(args.file).read_bytes()
        except OSError as exc:
            print(f"wardgate decode: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        obj = decode_any(payload)
    except Exception as exc:
        print(f"wardgate decode: {args.file}: not a wardgate payload: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(obj, indent=2, ensure_ascii=False))
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    import signal

    from edge.receiver import ReceiverOptions, run_receiver

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
        ca=args.ca,
        cert=args.cert,
        key=args.key,
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


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    try:
        return run_demo(
            duration=args.duration,
            workdir=args.workdir,
            plain=args.plain,
            without=frozenset(args.without),
            check_only=args.check,
        )
    except RuntimeError as exc:  # a part that passed the preflight and still did not start
        print(f"wardgate demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE
