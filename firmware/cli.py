"""`wardgate firmware build|boards|flash`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_OUT = Path("build/firmware")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("firmware", help="build and flash the MicroPython sensor-node firmware")
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)

    b = fsub.add_parser("build", help="compile with mpy-cross into a bundle with a manifest")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    b.add_argument("--config", type=Path, help="node.json to include (see docs/sensors.md)")
    b.add_argument(
        "--board",
        help="the board the node is built for: sets --march and checks node.json's pins "
        "against the board's pin map (`wardgate firmware boards` lists them)",
    )
    b.add_argument(
        "--march",
        help="native code for one CPU, one of mpy-cross's -march values (armv6m: RP2040, "
        "xtensawin: ESP32); default: portable bytecode, or the --board's",
    )
    b.add_argument(
        "--clean",
        action="store_true",
        help="remove the previous bundle (and what killed builds left) first; without it a "
        "failed build keeps the previous bundle",
    )
    b.set_defaults(func=_build)

    bl = fsub.add_parser("boards", help="list the boards --board knows, with their pins")
    bl.set_defaults(func=_boards)

    f = fsub.add_parser("flash", help="copy a built bundle onto a board with mpremote")
    f.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyACM0")
    f.add_argument("--bundle", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    f.add_argument("--dry-run", action="store_true", help="print the mpremote command only")
    f.set_defaults(func=_flash)


def _build(args: argparse.Namespace) -> int:
    from firmware.build import BuildError, UsageError, build

    try:
        manifest = build(args.out, args.config, args.march, args.board, args.clean)
    except BuildError as exc:
        print(f"wardgate firmware build: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    board = f"for {manifest['board']}, " if manifest["board"] else ""
    print(
        f"built wardgate-node {manifest['version']} ({board}{manifest['march']}, protocol "
        f"{manifest['protocol_version']}, {manifest['mpy_cross']}) into {args.out}: "
        f"{len(manifest['files'])} files"
    )
    return 0


def _boards(args: argparse.Namespace) -> int:
    from firmware.boards import BOARDS

    for board in BOARDS.values():
        print(f"{board.name:8} -march={board.march:10} {board.description}")
    return 0


def _flash(args: argparse.Namespace) -> int:
    from firmware.build import BuildError, flash_command

    if not args.dry_run and not os.path.exists(args.port):
        print(
            f"wardgate firmware flash: port {args.port} not found; is the board plugged in? "
            "(`mpremote devs` lists the boards it sees)",
            file=sys.stderr,
        )
        return 2
    mpremote = shutil.which("mpremote") or str(Path(sys.executable).with_name("mpremote"))
    try:
        cmd = flash_command(args.bundle, args.port, mpremote)
    except BuildError as exc:
        print(f"wardgate firmware flash: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(json.dumps(cmd))
        return 0
    return subprocess.run(cmd).returncode
