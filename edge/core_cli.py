"""Core subcommands: run, check-config, decode, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.config import DEFAULT_PATH


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the gateway (as the systemd service does)")
    p.add_argument("--config", type=Path, default=DEFAULT_PATH, help=f"default {DEFAULT_PATH}")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file; exit 1 with each problem")
    p.add_argument("path", type=Path, nargs="?", default=DEFAULT_PATH)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("decode", help="print a wardgate payload (CBOR or JSON) as JSON")
    p.add_argument("file", nargs="?", default="-", help="a payload file, or - for stdin")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "demo",
        help="live demo on built-in defaults: private broker, gateway, live view of what arrives",
    )
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--workdir", type=Path, default=None, help="keep demo files here")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
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
    cfg = _load_config(args.path)
    if cfg is None:
        return 1
    print(f"{args.path}: ok (gateway {cfg.gateway.id}, topics under {cfg.topics.base}/)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from edge.runtime import Gateway
    from edge.uplink.outbox import OutboxError

    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    logging.getLogger().setLevel(cfg.logging.level.upper())
    try:
        gateway = Gateway(cfg, config_path=args.config)
    except (OutboxError, OSError) as exc:
        print(f"wardgate: {exc}", file=sys.stderr)
        return 2
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
            return 2
    try:
        obj = decode_any(payload)
    except Exception as exc:
        print(f"wardgate decode: {args.file}: not a wardgate payload: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(obj, indent=2, ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(duration=args.duration, workdir=args.workdir, plain=args.plain)
