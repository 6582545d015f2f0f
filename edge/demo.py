"""`wardgate demo`: the whole path on one machine, on built-in defaults.

A private Mosquitto (password auth + the same per-gateway ACL shape a fleet uses), a gateway with
a heartbeat and a test source, a `test-alarm` command sent to it, and a live view of everything
that arrives at the broker, decoded.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge import config as config_mod
from edge.devbroker import MosquittoBroker
from edge.events import decode_any
from edge.topics import parse

DEMO_GATEWAY = "demo-gw-01"
DEMO_ACL = """\
user viewer
topic readwrite wg/#

pattern write wg/v1/+/+/%u/#
pattern read wg/v1/+/+/%u/cmd/#
pattern read wg/v1/+/+/%u/ack
"""


def demo_config(broker: MosquittoBroker, workdir: Path) -> config_mod.Config:
    password_file = workdir / "gateway.password"
    password_file.write_text("demo-gateway-secret\n")
    password_file.chmod(0o600)
    return config_mod.from_dict(
        {
            "gateway": {"id": DEMO_GATEWAY, "district": "demo", "ward": "ward-1"},
            "uplink": {
                "host": broker.host,
                "port": broker.port,
                "username": DEMO_GATEWAY,
                "password_file": str(password_file),
                "keepalive_s": 10,
            },
            "outbox": {"path": str(workdir / "outbox.sqlite3")},
            "health": {"heartbeat_s": 5},
            "test_source": {"enabled": True, "interval_s": 2, "alarm_every_s": 20},
        },
        "<demo defaults>",
    )


class LiveView:
    """Subscribes to the whole tree and keeps the latest messages for display."""

    def __init__(self, broker: MosquittoBroker, user: str, password: str) -> None:
        self.rows: deque[tuple[str, str, str, str]] = deque(maxlen=18)
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="demo-viewer",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *a: c.subscribe("wg/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = parse(msg.topic) or {"leaf": msg.topic}
        leaf = parts["leaf"]
        if leaf.startswith("snap/"):
            summary = f"JPEG {len(msg.payload)} bytes"
        else:
            try:
                obj = decode_any(msg.payload)
                summary = _summary(leaf, obj)
            except Exception as exc:
                summary = f"(undecodable: {exc})"
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            self.counts[leaf] = self.counts.get(leaf, 0) + 1
            self.rows.append((stamp, leaf, f"{len(msg.payload)} B", summary))

    def render(self):
        from rich.table import Table

        table = Table(title=f"wardgate demo: what the broker receives from {DEMO_GATEWAY}")
        for col in ("time", "topic", "size", "content"):
            table.add_column(col, overflow="fold")
        with self.lock:
            for row in self.rows:
                style = "bold red" if row[1] == "evt/alarm" else None
                table.add_row(*row, style=style)
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        table.caption = f"received so far - {counts}"
        return table

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _summary(leaf: str, obj: dict[str, Any]) -> str:
    if "kind" in obj and "data" in obj:
        data = obj["data"]
        if obj["kind"] == "telemetry":
            data = {k: data.get(k) for k in ("uptime_s", "load1", "rss_mb", "outbox", "evicted")}
        return f"{obj['kind']} seq={obj.get('seq')} src={obj['source']} {json.dumps(data)}"[:160]
    return json.dumps(obj)[:160]


def run_demo(duration: float = 0, workdir: Path | None = None, plain: bool = False) -> int:
    from edge.runtime import Gateway

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="wardgate-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker(
        workdir / "broker",
        users={DEMO_GATEWAY: "demo-gateway-secret", "viewer": "viewer-secret"},
        acl=DEMO_ACL,
    ).start()
    print(f"private Mosquitto on 127.0.0.1:{broker.port} (config {broker.conf_path})")
    gateway = Gateway(demo_config(broker, workdir))
    view = LiveView(broker, "viewer", "viewer-secret")
    stop = threading.Event()
    runner = threading.Thread(target=gateway.run_forever, args=(stop,), daemon=True)
    runner.start()
    # as an operator would: ask the gateway for a test alarm over the command topic
    time.sleep(1.0)
    view.client.publish(gateway.topics.cmd("test-alarm"), b'{"id": "demo-1"}', qos=1)
    deadline = time.monotonic() + duration if duration else None
    try:
        if plain:
            shown = 0
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                with view.lock:
                    rows = list(view.rows)
                total = sum(view.counts.values())
                for row in rows[len(rows) - min(len(rows), total - shown) :]:
                    print("  ".join(row), flush=True)
                shown = total
        else:
            from rich.live import Live

            with Live(view.render(), refresh_per_second=4) as live:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.25)
                    live.update(view.render())
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        runner.join(15)
        view.stop()
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
    print("demo stopped; received:", json.dumps(view.counts))
    return 0
