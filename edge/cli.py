"""The one `wardgate` command. Subcommands of other packages register through `register(sub)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that add subcommands; each must be cheap to import (heavy imports inside handlers).
PLUGIN_MODULES = (
    "edge.core_cli",
    "edge.vision.cli",
    "sensor_drivers.cli",
    "firmware.cli",
    "provisioning.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wardgate",
        description="Edge gateway for smart-ward cameras and fire sensors.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that part of wardgate is not installed
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
