"""The gateway's subcommands: run, check-config, status; and decode, which needs only `protocol`
(the base install: a backend decodes payloads without the gateway's dependencies)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge import CONFIG_PATH as DEFAULT_PATH
from edge.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE


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

    p = sub.add_parser(
        "status",
        help="the running gateway's self-test: broker, certificates, clock, outbox, pipelines; "
        "exit 0 when all green, 1 otherwise",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_PATH, help=f"default {DEFAULT_PATH}")
    p.add_argument("--socket", type=Path, help="the status socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="print the self-test as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("decode", help="print a wardgate payload (CBOR or JSON) as JSON")
    p.add_argument("file", nargs="?", default="-", help="a payload file, or - for stdin")
    p.set_defaults(func=cmd_decode)


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


def cmd_status(args: argparse.Namespace) -> int:
    """Ask the running gateway (its status socket); every red line says what to do."""
    from edge import selftest

    path = args.socket
    if path is None:
        cfg = _load_config(args.config)
        if cfg is None:
            return EXIT_CONFIG
        path = selftest.socket_path(cfg)
    try:
        result = selftest.query(path)
    except PermissionError:
        print(
            f"wardgate status: {path}: permission denied: run it with sudo, or join the "
            "`wardgate` group (sudo adduser $USER wardgate)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except (OSError, ValueError) as exc:
        print(
            f"wardgate status: the gateway is not running or does not answer at {path} ({exc}): "
            "systemctl status wardgate; journalctl -u wardgate -n 50",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        color = sys.stdout.isatty()
        for c in result["checks"]:
            mark = "ok " if c["ok"] else "RED"
            if color:
                mark = f"\033[{32 if c['ok'] else 31}m{mark}\033[0m"
            print(f"{mark} {c['name']}: {c['detail']}")
            if c.get("fix"):
                print(f"    -> {c['fix']}")
        print(
            f"gateway {result.get('gateway', '?')}: "
            + ("all green" if result["ok"] else "NOT all green")
        )
    return 0 if result["ok"] else EXIT_FAILURE


def cmd_decode(args: argparse.Namespace) -> int:
    from protocol.events import decode_any

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
