"""The one `wardgate` command: a thin dispatcher over every role's subcommands.

Each subcommand lives in its role's package (COMMANDS) and is registered by that module's
`register(sub)`. Only the module of the subcommand given is imported (every module, all cheap
to import, only for `wardgate --help`); its heavy dependencies load inside the handler. A
subcommand whose role is not installed (`wardgate alarms` on a gateway-only install) ends with
one line naming the extra to install, and exit status 2. This module imports nothing but the
standard library: it is the composition root, the one place that names every role (by string).

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

#: subcommand -> (the module that registers it, the extra that installs what it needs; None: the
#: base install). Each module must be cheap to import (standard library only at import time).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "check-config": ("edge.core_cli", "gateway"),
    "run": ("edge.core_cli", "gateway"),
    "status": ("edge.core_cli", "gateway"),
    "localweb": ("edge.localweb.cli", "gateway"),
    "decode": ("edge.core_cli", None),
    "alarms": ("central.cli", "central"),
    "central": ("central.cli", "central"),
    "cmd": ("central.opcmd", "central"),
    "detect": ("edge.vision.cli", "gateway"),
    "serial": ("sensor_drivers.cli", "gateway"),
    "firmware": ("firmware.cli", "firmware"),
    "provision": ("provisioning.cli", "fleet"),
    "demo": ("devtools.cli", "demo"),
    "node": ("devtools.cli", "demo"),
    "train-smoke": ("devtools.cli", "models"),
}
#: wardgate's own top-level packages: a missing module outside them is a missing dependency
OWN_PACKAGES = frozenset({"edge", "sensor_drivers", "protocol", "central", "provisioning",
                          "firmware", "devtools"})
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


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (top-level options skipped), if any."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv` naming a known subcommand, only that subcommand's module loads."""
    parser = argparse.ArgumentParser(
        prog="wardgate",
        description="Edge gateway for smart-ward cameras and fire sensors.",
        epilog="exit status: 0 ok, 1 failure, 2 usage, 3 config error (README: Exit status)",
    )
    parser.add_argument("--version", action="version", version=f"wardgate {version()}")
    _add_log_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_command(sys.argv[1:] if argv is None else argv)
    if chosen in COMMANDS:
        modules = [COMMANDS[chosen][0]]
    else:  # --help, --version, a typo: every subcommand, for argparse's list of choices
        modules = list(dict.fromkeys(module for module, _ in COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    _add_log_options_below(parser)
    return parser


def missing_role(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one line to print when `command` failed for a dependency its role's extra installs."""
    missing = (exc.name or "").partition(".")[0]
    if not missing or missing in OWN_PACKAGES or command not in COMMANDS:
        return None
    extra = COMMANDS[command][1] or "gateway"
    return (
        f"wardgate {command}: not installed here (no module named {missing!r}): "
        f"pip install 'wardgate[{extra}]'"
    )


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
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as exc:
        line = missing_role(args.command, exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
