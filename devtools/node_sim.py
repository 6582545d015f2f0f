"""`wardgate node simulate`: the real node firmware (MicroPython unix port) on a pty, driven by
typed commands, for a gateway or `wardgate serial monitor` on the bench.

    $ wardgate node simulate "smoke 70"
    node 7 (wardgate-node 1.0.0) on /dev/pts/5, link /tmp/wardgate-node07
    > press mcp
    node: alarm mcp call_point seq=4

Commands (arguments first, each one command, then standard input until `quit` or its end):
    smoke [NAME] PERCENT       the smoke head reads PERCENT % (alarm at its alarm_pct, 50 %)
    heat [NAME] CELSIUS        the NTC reads CELSIUS degC (fixed alarm at fixed_c, 58 degC)
    press [NAME], release [NAME]    a call point or flame contact
    open NAME, short NAME      a line fault: the wire cut, or shorted
    restore [NAME]             the line (all lines) back to healthy and quiet
    wait SECONDS, status, help, quit
NAME may be left out when the node has one sensor of that kind.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from devtools.unix_node import EDGE_RE, UnixNode

DEFAULT_NODE: dict[str, Any] = {
    "node": 7,
    "sounder_pin": "sounder",
    "reading_min_s": 1,
    "sensors": [
        {"kind": "smoke", "name": "smoke", "pin": "smoke_adc"},
        {"kind": "heat", "name": "heat", "pin": "heat_adc"},
        {"kind": "flame", "name": "flame", "pin": "flame_in"},
        {"kind": "call_point", "name": "mcp", "pin": "mcp_line", "input": "eol"},
    ],
}
CONTACTS = ("flame", "call_point")


class CommandError(ValueError):
    pass


def default_link(node_id: int) -> Path:
    return Path(tempfile.gettempdir()) / f"wardgate-node{node_id:02d}"


class Simulator:
    """Turns command lines into UnixNode calls; prints what the firmware does."""

    def __init__(self, node: UnixNode, say: Callable[[str], None]) -> None:
        self.node = node
        self.say = say

    def _sensor(self, kinds: tuple[str, ...], name: str | None, verb: str) -> dict[str, Any]:
        candidates = [s for s in self.node.settings["sensors"] if s["kind"] in kinds]
        if name is not None:
            for s in self.node.settings["sensors"]:
                if s["name"] == name:
                    if s["kind"] not in kinds:
                        raise CommandError(
                            f"{name} is a {s['kind']} sensor: `{verb}` needs " + " or ".join(kinds)
                        )
                    return s
            raise CommandError(
                f"no sensor {name!r}; this node has: "
                + ", ".join(s["name"] for s in self.node.settings["sensors"])
            )
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise CommandError(f"this node has no {' or '.join(kinds)} sensor")
        raise CommandError(
            f"`{verb}` needs a sensor name: " + ", ".join(s["name"] for s in candidates)
        )

    @staticmethod
    def _number(text: str, what: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise CommandError(f"{what} must be a number, not {text!r}") from None

    def run(self, line: str) -> bool:
        """Carry out one command; False when it was `quit`. CommandError on a bad one."""
        words = line.split("#", 1)[0].split()
        if not words:
            return True
        verb, rest = words[0].lower(), words[1:]
        if verb in ("quit", "exit"):
            return False
        if verb in ("smoke", "heat"):
            if len(rest) not in (1, 2):
                raise CommandError(
                    f"usage: {verb} [NAME] {'PERCENT' if verb == 'smoke' else 'CELSIUS'}"
                )
            s = self._sensor((verb,), rest[0] if len(rest) == 2 else None, verb)
            value = self._number(rest[-1], "the value")
            if verb == "smoke":
                self.node.set_smoke(s["name"], value)
                self.say(f"{s['name']}: smoke head at {value:.1f} %")
            else:
                self.node.set_temperature(s["name"], value)
                self.say(f"{s['name']}: {value:.1f} °C")
        elif verb in ("press", "release"):
            s = self._sensor(CONTACTS, rest[0] if rest else None, verb)
            (self.node.press if verb == "press" else self.node.release)(s["name"])
            self.say(f"{s['name']}: {'pressed' if verb == 'press' else 'released'}")
        elif verb in ("open", "short"):
            if len(rest) != 1:
                raise CommandError(f"usage: {verb} NAME")
            s = self._sensor(("smoke", "heat", *CONTACTS), rest[0], verb)
            if s["kind"] in CONTACTS and s["input"] != "eol":
                raise CommandError(
                    f"{s['name']} is a plain digital input: no line supervision, so an "
                    f'{verb} line looks like a quiet one (use input = "eol")'
                )
            (self.node.open_line if verb == "open" else self.node.short_line)(s["name"])
            self.say(f"{s['name']}: line {'open' if verb == 'open' else 'shorted'}")
        elif verb == "restore":
            names = [rest[0]] if rest else [s["name"] for s in self.node.settings["sensors"]]
            for name in names:
                self._sensor(("smoke", "heat", *CONTACTS), name, verb)
                self.node.restore_line(name)
            self.say(f"{', '.join(names)}: healthy and quiet")
        elif verb == "wait":
            if len(rest) != 1:
                raise CommandError("usage: wait SECONDS")
            time.sleep(max(0.0, self._number(rest[0], "SECONDS")))
        elif verb == "status":
            for s in self.node.settings["sensors"]:
                self.say(
                    f"{s['name']:12} {s['kind']:10} pin {s['pin']}: "
                    f"input {self.node.inputs.get(str(s['pin']))!r}"
                )
        elif verb == "help":
            self.say(__doc__.split("Commands", 1)[1].split("\n", 1)[1].rstrip())
        else:
            raise CommandError(f"unknown command {verb!r} (help lists them)")
        return True


def node_line(line: str) -> str | None:
    """A firmware output line as the bench person wants it (None: not worth showing)."""
    match = EDGE_RE.match(line)
    if match:
        return f"node: {match['what']}"
    if line.startswith("OUT "):
        _, pin, level = line.split()
        return f"node: output {pin} {'on' if level == '1' else 'off'}"
    return line


def simulate(
    node_cfg: dict[str, Any],
    commands: Iterable[str],
    stdin: Iterable[str] | None,
    link: Path,
    bundle: Path | None = None,
) -> int:
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)

    def on_line(line: str) -> None:
        shown = node_line(line)
        if shown:
            say(shown)

    node = UnixNode(node_cfg, link=link, bundle=bundle, on_line=on_line)
    sim = Simulator(node, say)
    node.plug()
    try:
        node.release_port()  # the gateway (or serial monitor) opens the pty by its path
        say(f"node {node.settings['node']} on {node.port}, link {link}")
        say("commands: smoke, heat, press, release, open, short, restore, wait, status, help, quit")
        sources = [commands] + ([stdin] if stdin is not None else [])
        for source in sources:
            for line in source:
                try:
                    if not sim.run(line):
                        return 0
                except CommandError as exc:
                    say(f"error: {exc}")
                if node.proc is not None and node.proc.poll() is not None:
                    say(f"the node stopped (exit status {node.proc.returncode})")
                    return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.close()
        say("node stopped")


def load_node_config(path: Path) -> dict[str, Any]:
    """node.json checked as `firmware build` checks it (every problem, file:line)."""
    from firmware.build import check_node_config

    check_node_config(path)
    return json.loads(path.read_text())
