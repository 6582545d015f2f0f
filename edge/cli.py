"""The one `wardgate` command. Subcommands of other packages register through `register(sub)`.

Exit status, the same for every subcommand (README, "Exit status"):
0 done; 1 runtime failure (the work itself failed, or `check-config`/`provision verify` found
problems); 2 usage (a bad command line, or a file or port it names is not there);
3 config error (the gateway's config file is missing or invalid: `wardgate run`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3

# Modules that add subcommands; each must be cheap to import (heavy imports inside handlers).
PLUGIN_MODULES = (
    "edge.core_cli",
    "edge.vision.cli",
    "sensor_drivers.cli",
    "firmware.cli",
    "provisioning.cli",
)
LEVELS = ("debug", "info", "warning", "error", "critical")
# sd-daemon(3) priorities: journald reads a "<N>" line prefix on a stream as the line's priority
JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("wardgate")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_log_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so that a value given before the subcommand
    # is not overwritten by the subparser's default.
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging", **default)
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        help="logging level (overrides the config's [logging] level)",
        **default,
    )


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from dict.fromkeys(action.choices.values())  # aliases: once each


def _add_log_options_below(parser: argparse.ArgumentParser) -> None:
    for child in _subparsers(parser):
        _add_log_options(child, top=False)
        _add_log_options_below(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wardgate",
        description="Edge gateway for smart-ward cameras and fire sensors.",
        epilog="exit status: 0 ok, 1 failure, 2 usage, 3 config error (README: Exit status)",
    )
    parser.add_argument("--version", action="version", version=f"wardgate {version()}")
    _add_log_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that part of wardgate is not installed
            raise
        module.register(sub)
    _add_log_options_below(parser)
    return parser


def under_journald() -> bool:
    """stderr is the journal stream systemd set up for this service (systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own); each line starts with its sd-daemon priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{JOURNAL_PRIORITY.get(record.levelname, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup_logging(args: argparse.Namespace) -> None:
    if getattr(args, "log_level", None):
        level = args.log_level.upper()
    elif getattr(args, "verbose", False):
        level = "DEBUG"
    else:
        level = "INFO"
    args.log_level_set = bool(getattr(args, "log_level", None) or getattr(args, "verbose", False))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "wardgate", False)]:
        root.removeHandler(old)
    if not root.handlers:  # as logging.basicConfig: a host that set up logging (pytest) keeps it
        handler = logging.StreamHandler(sys.stderr)
        handler.wardgate = True  # type: ignore[attr-defined]
        if under_journald():
            handler.setFormatter(JournalFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
