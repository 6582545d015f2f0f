"""Test harness: a watching MQTT client, gateway config files, gateway processes."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol import mqtt as policy
from protocol.events import DecodeError, Event, decode
from tests.conftest import GATEWAY_PASSWORD, GATEWAY_USER, WATCHER_PASSWORD, WATCHER_USER

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Received:
    topic: str
    payload: bytes
    at: float
    properties: Any = None
    event: Event | None = None


@dataclass
class Watcher:
    """A backend-like subscriber with a persistent session (it survives broker restarts)."""

    broker: Any
    topic: str = "wg/#"
    client_id: str = "watcher"
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.arrived = threading.Condition(self.lock)
        endpoint = policy.Endpoint(
            host=self.broker.host,
            port=self.broker.port,
            username=WATCHER_USER,
            password=WATCHER_PASSWORD,
            client_id=self.client_id,
            keepalive_s=5,
            clean_start=False,
            session_expiry_s=600,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
            setting="watcher",
        )
        self.conn = policy.Connection(endpoint, on_connect=self._on_connect, name="watcher")
        self.client = self.conn.client
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.conn.start()
        assert self.subscribed.wait(10), "watcher could not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        rec = Received(msg.topic, msg.payload, time.monotonic(), msg.properties)
        if "/evt/" in msg.topic or msg.topic.endswith("/tele"):
            try:
                rec.event = decode(msg.payload)
            except DecodeError:
                pass  # tests that inject garbage look at the raw payload
        with self.arrived:
            self.messages.append(rec)
            self.arrived.notify_all()

    def events(self, kind: str | None = None) -> list[Event]:
        with self.lock:
            evs = [m.event for m in self.messages if m.event is not None]
        return [e for e in evs if kind is None or e.kind == kind]

    def on(self, suffix: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "messages") -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.arrived.wait(min(left, 0.5))

    def wait_for_events(self, kind: str, count: int = 1, timeout: float = 20.0) -> list[Event]:
        self.wait_for(lambda: len(self.events(kind)) >= count, timeout, f"{count} {kind} event(s)")
        return self.events(kind)

    def publish(self, topic: str, payload: bytes, **props: Any) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(properties, k, v)
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def stop(self) -> None:
        self.conn.stop()


def gateway_config_text(
    broker: Any,
    workdir: Path,
    *,
    tls: tuple[Path, ...] | None = None,
    extra: str = "",
    uplink_extra: str = "",
    keepalive_s: int = 5,
    heartbeat_s: float = 60,
    gateway_id: str = GATEWAY_USER,
) -> str:
    password_file = workdir / "password"
    password_file.write_text(GATEWAY_PASSWORD + "\n")
    port = broker.tls_port if tls else broker.port
    text = f"""\
[gateway]
id = "{gateway_id}"
district = "d01"
ward = "w01"
site_type = "fire_point"

[uplink]
host = "127.0.0.1"
port = {port}
username = "{GATEWAY_USER}"
password_file = "{password_file}"
keepalive_s = {keepalive_s}
backoff_initial_s = 0.2
backoff_max_s = 2.0
{uplink_extra}
"""
    if tls:
        text += f'\n[uplink.tls]\nca = "{tls[0]}"\n'
        if len(tls) == 3:
            text += f'cert = "{tls[1]}"\nkey = "{tls[2]}"\n'
    text += f"""
[outbox]
path = "{workdir / "outbox.sqlite3"}"

[health]
heartbeat_s = {heartbeat_s}

{extra}
"""
    return text


def write_config(workdir: Path, text: str) -> Path:
    path = workdir / "config.toml"
    path.write_text(text)
    return path


class GatewayProcess:
    """`wardgate run --config PATH` as a real process (for SIGKILL and systemd tests)."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115  (handed to the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        log.close()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SteppedClock:
    """A process's wall clock that a test steps for real while it runs (libfaketime), with
    CLOCK_MONOTONIC and CLOCK_BOOTTIME left alone, as NTP stepping a Pi's clock leaves them.

    libfaketime 0.9.10 turns Python 3.11's time.sleep (clock_nanosleep TIMER_ABSTIME on
    CLOCK_MONOTONIC) into EINVAL when monotonic clocks are not faked (wolfcw/libfaketime#426): a
    sitecustomize on the child's path makes time.sleep wait on an Event instead."""

    LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
    SITECUSTOMIZE = (
        "import threading, time\n"
        "_never = threading.Event()\n"
        "time.sleep = lambda seconds: _never.wait(seconds) if seconds > 0 else None\n"
    )

    def __init__(self, workdir: Path) -> None:
        self.offset_file = workdir / "faketime-offset"
        self.offset_file.write_text("+0\n")
        self.site = workdir / "faketime-site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(self.SITECUSTOMIZE)

    def env(self) -> dict[str, str]:
        assert self.LIB is not None, "libfaketime is not installed (Debian package faketime)"
        return {
            "LD_PRELOAD": self.LIB,
            "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": f"{self.site}{os.pathsep}{REPO}",
        }

    def step(self, offset: str) -> None:
        """Set the child's wall clock to real time + offset ("+3600", "-3600", "+0")."""
        self.offset_file.write_text(offset + "\n")
