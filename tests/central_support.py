"""The operations center in tests: `wardgate central run` as a real process, read through its store.

Replaces the old `wardgate alarms` receiver process: ingest stores, then acknowledges; tests look
at what it stored (the same store the console reads).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from central.store import Store
from tests.conftest import WATCHER_PASSWORD, WATCHER_USER
from tests.harness import REPO

#: Debian's Chromium (apt-get install chromium), driven by Playwright: no browser download
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # the alarm tone plays without a click
]


def central_config(
    broker,
    tmp_path: Path,
    *,
    name: str = "ingest1",
    extra: str = "",
    username: str = WATCHER_USER,
    password: str = WATCHER_PASSWORD,
) -> Path:
    pw = tmp_path / f"{name}.password"
    pw.write_text(password)
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[broker]
host = "{broker.host}"
port = {broker.port}
username = "{username}"
password_file = "{pw}"
client_id = "{name}"

[store]
url = "sqlite:///{tmp_path / (name + ".db")}"

[alarms]
supervision_s = 30
{extra}
"""
    )
    return path


class CentralProcess:
    """`wardgate central run --no-console` (or with a console on a free port) as a process."""

    def __init__(self, broker, tmp_path: Path, name: str = "ingest1", *, console: bool = False,
                 config: Path | None = None, extra: str = "") -> None:  # fmt: skip
        self.config = config or central_config(broker, tmp_path, name=name, extra=extra)
        self.url = f"sqlite:///{tmp_path / (name + '.db')}"
        self.args = [
            sys.executable, "-m", "edge.cli", "--log-level", "info", "central", "run",
            "--config", str(self.config),
        ]  # fmt: skip
        if console:
            self.args += ["--port", "0"]
        else:
            self.args.append("--no-console")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self._store: Store | None = None

    def start(self, wait_subscribed: bool = True) -> CentralProcess:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait_subscribed:
            self.wait_line("ingest: subscribed", 20)
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"central: no {text!r} within {timeout} s:\n{self.output()}")

    def console_url(self, timeout: float = 20) -> str:
        """The console's address, from the service's log line `console on http://HOST:PORT/`
        (with `console=True` it listens on a free port)."""
        self.wait_line("console on http", timeout)
        match = re.search(r"console on (https?://\S+/)", self.output())
        assert match, self.output()
        return match.group(1)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.url)
        return self._store

    def events(self, kind: str | None = None) -> list[dict]:
        return self.store.history(kind=kind, limit=100_000)

    def wait_event(self, event_id: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e["id"] == event_id:
                    return e
            time.sleep(0.05)
        raise AssertionError(f"central: event {event_id} not stored:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 15) -> int | None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
