"""The operations center's commands: `wardgate central run|user|check-config`, `wardgate alarms`.

Cheap to import: the store, paho and the web stack load inside the handlers.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from pathlib import Path

from edge.cli import EXIT_CONFIG, EXIT_USAGE

log = logging.getLogger("wardgate.central")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "central",
        help="the operations center: ingest, store, dispatchers' console (docs/console.md)",
    )
    csub = p.add_subparsers(dest="central_command", required=True)

    run = csub.add_parser("run", help="ingest + store + web console (+ webhook, SIA DC-09)")
    run.add_argument("--config", type=Path, help="central.toml (default: built-in defaults)")
    run.add_argument("--db", help="store URL: sqlite:///PATH or postgresql://... (overrides)")
    run.add_argument("--bind", help="console bind address (overrides console.bind)")
    run.add_argument("--port", type=int, help="console port (overrides console.port)")
    run.add_argument("--no-console", action="store_true", help="ingest only (no web server)")
    run.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    run.set_defaults(func=cmd_run)

    check = csub.add_parser("check-config", help="validate central.toml; exit 3 on errors")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(func=cmd_check)

    user = csub.add_parser("user", help="console accounts")
    usub = user.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="create or update a console account (asks the password)")
    add.add_argument("name")
    add.add_argument("--role", choices=("viewer", "dispatcher", "supervisor"), required=True)
    add.add_argument("--display-name", help="shown on every screen (default: the name)")
    add.add_argument("--password-file", type=Path, help="read the password from this file")
    add.add_argument("--config", type=Path)
    add.add_argument("--db", help="store URL (overrides the config's)")
    add.set_defaults(func=cmd_user_add)

    alarms = sub.add_parser(
        "alarms",
        help="the console's queue in a terminal (reads the store; never subscribes)",
    )
    alarms.add_argument("--config", type=Path)
    alarms.add_argument("--db", help="store URL (overrides the config's)")
    alarms.add_argument("--json", action="store_true", help="JSON lines, no live view")
    alarms.add_argument("--duration", type=float, default=0, help="stop after N seconds")
    alarms.set_defaults(func=cmd_alarms)


def _config(args: argparse.Namespace):
    from central.config import load
    from edge.confbase import ConfigError

    try:
        cfg = load(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"wardgate central: {exc.path}: configuration errors:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    changes: dict = {}
    if getattr(args, "db", None):
        changes["store"] = cfg.store.model_copy(update={"url": args.db})
    console = {}
    if getattr(args, "bind", None):
        console["bind"] = args.bind
    if getattr(args, "port", None) is not None:
        console["port"] = args.port
    if console:
        changes["console"] = cfg.console.model_copy(update=console)
    return cfg.model_copy(update=changes) if changes else cfg


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.config}: ok (store {cfg.store.url}, broker {cfg.broker.host}:{cfg.broker.port})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return EXIT_CONFIG
    from central.service import CentralService
    from central.store import StoreError

    try:
        service = CentralService(cfg, config_dir=args.config.parent if args.config else None)
    except (StoreError, OSError) as exc:
        print(f"wardgate central: cannot open the store {cfg.store.url}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def interrupt(signum, frame):
        service.request_stop()

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    service.start(console=not args.no_console)
    if not args.no_console:
        try:
            port = service.wait_console()
            scheme = "https" if cfg.console.tls_cert else "http"
            log.warning("console on %s://%s:%d/", scheme, cfg.console.bind, port)
        except TimeoutError:
            log.error("the console did not start (port %s in use?)", cfg.console.port)
            service.stop()
            return 1
    code = service.wait(args.duration)
    service.stop()
    return code


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return EXIT_CONFIG
    from central.accounts import AccountError, add_user
    from central.store import Store

    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"wardgate central user add: --password-file: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("the two passwords differ", file=sys.stderr)
            return EXIT_USAGE
    store = Store(cfg.store.url)
    try:
        add_user(store, args.name, args.role, args.display_name or args.name, password)
    except AccountError as exc:  # a bad name or a short password: say which
        print(f"wardgate central user add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    print(f"{args.name}: {args.role}")
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return EXIT_CONFIG
    from central.screen import run_screen

    return run_screen(cfg.store.url, json_lines=args.json, duration=args.duration)
