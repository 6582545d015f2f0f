"""Shared helpers for the provisioning tests (no tests here): a fleet, and MQTT peers."""

from __future__ import annotations

import queue
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt

from devtools.devbroker import start_local_broker
from protocol import mqtt as policy
from provisioning import pki
from provisioning.enroll import Enroller
from provisioning.fleet import FLEET_TOML_TEMPLATE, FleetDir, write_file
from provisioning.inventory import load

PASSPHRASE = b"a test passphrase, not a real one"

#: gw-a: a node line (by-id name) and a Modbus bus; gw-c: the older `wardnode` spelling
NODE_LINE = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0=node 7 8"
MODBUS_BUS = "/dev/ttyUSB1=modbus baud=9600 parity=E 1:smoke_heat 12:gas_lel:kitchen"
INVENTORY = f"""\
id,district,ward,site_type,hw_serial,cameras,sensors,network
gw-a,d01,w1,fire_point,10000000000000a1,,{NODE_LINE};{MODBUS_BUS},dhcp
gw-b,d01,w2,police_post,10000000000000b2,gate=rtsp://10.0.0.9/s1,,dhcp
gw-c,d02,w1,fire_point,10000000000000c3,,/dev/ttyAMA0=wardnode,ip=10.2.1.5/24;gw=10.2.1.1;dns=10.2.1.1
"""


#: the fleet-wide operator that `provision init` wrote into every fleet.toml before per-person
#: operator accounts (issue 9): the tests' fleets are such existing fleets, which keep it
LEGACY_OPS = '\n[[accounts.operator]]\nname = "ops"\ndistricts = ["*"]\n'


def make_fleet(
    root: Path, inventory: str = INVENTORY, settings_extra: str = "", *, legacy_ops: bool = True
) -> FleetDir:
    """A fleet directory as `wardgate provision init` leaves it, with a test broker name (and,
    unless `legacy_ops=False`, the `ops` operator of fleets made before issue 9)."""
    fleet = FleetDir(root)
    root.mkdir(parents=True, exist_ok=True)
    pki.save_ca(pki.create_ca("wardgate test fleet CA", 60), fleet.ca_dir, PASSPHRASE)
    text = FLEET_TOML_TEMPLATE.format(host="localhost", ca_name="wardgate test fleet CA")
    text = text.replace("alt_names = []", 'alt_names = ["127.0.0.1"]')
    write_file(fleet.settings_path, text + (LEGACY_OPS if legacy_ops else "") + settings_extra)
    (root / "inventory.csv").write_text(inventory)
    return fleet


def enroller(fleet: FleetDir) -> Enroller:
    return Enroller(fleet, lambda: PASSPHRASE)


def run(fleet: FleetDir, inventory: str | None = None, **kwargs):
    path = fleet.root / "inventory.csv"
    if inventory is not None:
        path.write_text(inventory)
    return enroller(fleet).run(load(path), **kwargs)


def copy_fleet(src: FleetDir, dst: Path) -> FleetDir:
    shutil.copytree(src.root, dst, symlinks=True)
    (dst / ".lock").unlink(missing_ok=True)
    return FleetDir(dst)


@contextmanager
def fleet_broker(fleet: FleetDir, workdir: Path):
    """The fleet's own generated mosquitto.conf, password file, ACL, certificates and CRL, loaded
    into a private real Mosquitto on free loopback ports."""
    broker = start_local_broker(fleet, workdir)
    try:
        yield broker
    finally:
        broker.stop()


def bundle_file(fleet: FleetDir, gateway: str, name: str) -> Path:
    return fleet.bundle(gateway) / "boot/wardgate/etc" / name


class Peer:
    """A paho-mqtt 2.x MQTT v5 client over TLS, with blocking helpers for tests."""

    def __init__(
        self,
        fleet: FleetDir,
        port: int,
        *,
        gateway: str | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        if gateway is not None and cert is None:
            cert = bundle_file(fleet, gateway, "tls/gateway.crt")
            key = bundle_file(fleet, gateway, "tls/gateway.key")
        self.port = port
        # the connection policy, as every wardgate client; with paho's own reconnect, as the
        # bare paho peer these ACL tests were written against (a peer the broker drops comes
        # back and resends its unacknowledged publish)
        self.endpoint = policy.Endpoint(
            host="127.0.0.1",
            port=port,
            tls=policy.Tls(fleet.ca_dir / "ca.crt", cert, key),
            username=username,
            password=password,
            client_id=client_id or f"test-{uuid.uuid4().hex[:10]}",
            keepalive_s=10,
            setting="peer",
        )
        self.client = policy.new_client(self.endpoint, paho_reconnect=True)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connack = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._ack_codes: dict[int, object] = {}
        self.connect_reason = None
        self.disconnects = 0  # connections the broker (or the network) closed
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_ack
        self.client.on_publish = self._on_ack

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_reason = reason_code
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects += 1
        self._connack.set()

    def _on_ack(self, client, userdata, mid, reason_codes, properties):
        self._ack_codes[mid] = reason_codes
        self._acks.setdefault(mid, threading.Event()).set()

    def connect(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted; raises ssl.SSLError if the handshake is refused."""
        policy.connect(self.client, self.endpoint)
        self.client.loop_start()
        self._connack.wait(timeout)
        return self.connect_reason is not None and not self.connect_reason.is_failure

    def _wait(self, mid: int, timeout: float = 5.0):
        self._acks.setdefault(mid, threading.Event()).wait(timeout)
        return self._ack_codes.get(mid)

    def subscribe(self, topic: str, qos: int = 1):
        _, mid = self.client.subscribe(topic, qos)
        return self._wait(mid)

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 1):
        info = self.client.publish(topic, payload, qos)
        return self._wait(info.mid)

    def received(self, timeout: float = 1.0) -> list[tuple[str, bytes]]:
        """Everything that arrives until `timeout` passes with nothing new."""
        out = []
        while True:
            try:
                msg = self.messages.get(timeout=timeout)
            except queue.Empty:
                return out
            out.append((msg.topic, msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
