"""Broker identity (issue 8, defect 13), probed on a real Mosquitto loaded with the fleet's own
generated files: a client id belongs to its own account, so no receiver, operator or other
gateway can take over a gateway's connection and session; gateway ids and account names never
collide; retained events are not replayed to the alarm receivers."""

from __future__ import annotations

import json
import signal
import threading
import time
import tomllib

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from provisioning.fleet import FleetError
from tests.test_provision_support import (
    INVENTORY,
    Peer,
    bundle_file,
    copy_fleet,
    fleet_broker,
    make_fleet,
    run,
)

A = "wg/v1/d01/w1/gw-a"
TAKEOVER = "Client gw-a already connected, closing old connection"
#: a second operator watches gw-a and sends it commands while `ops` attacks
WATCHER = '\n[[accounts.operator]]\nname = "watch"\ndistricts = ["d01"]\n'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"), settings_extra=WATCHER)
    run(fleet)
    return fleet


@pytest.fixture(scope="module")
def broker(fleet, tmp_path_factory):
    with fleet_broker(fleet, tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def peers():
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def password(fleet, name: str) -> str:
    if name.startswith("gw-"):
        return bundle_file(fleet, name, "mqtt.password").read_text().strip()
    return (fleet.accounts_dir / f"{name}.password").read_text().strip()


def connect(peers, fleet, port, **kw) -> Peer:
    peer = Peer(fleet, port, **kw)
    peers.append(peer)
    assert peer.connect(), f"refused: {peer.connect_reason}"
    return peer


def takeovers(broker) -> int:
    return broker.log().count(TAKEOVER)


# --- the gateway's real uplink against every other account --------------------------------------


@pytest.fixture(scope="module")
def gateway(fleet, broker, tmp_path_factory):
    """gw-a's real runtime on its bundle's config.toml (mutual TLS, client id = gateway id)."""
    from edge.config import from_dict
    from edge.runtime import Gateway

    etc = bundle_file(fleet, "gw-a", "config.toml").parent
    data = tomllib.loads((etc / "config.toml").read_text())
    data.pop("serial", None)  # the bundle's serial lines do not exist here
    data.pop("vision", None)
    data["uplink"].update(host="127.0.0.1", port=broker.cert_port, keepalive_s=10,
                          password_file=str(etc / "mqtt.password"),
                          tls={"ca": str(etc / "tls/ca.crt"), "cert": str(etc / "tls/gateway.crt"),
                               "key": str(etc / "tls/gateway.key")})  # fmt: skip
    data["outbox"] = {"path": str(tmp_path_factory.mktemp("gw") / "outbox.sqlite3")}
    gw = Gateway(from_dict(data, etc / "config.toml"))
    stop = threading.Event()
    runner = threading.Thread(target=gw.run_forever, args=(stop,), daemon=True)
    runner.start()
    yield gw
    stop.set()
    runner.join(20)


@pytest.fixture
def operator(fleet, broker, gateway, peers):
    """An operator reading gw-a's state and answers; returns once gw-a has said it is online."""
    ops = connect(peers, fleet, broker.password_port, username="watch",
                  password=password(fleet, "watch"))  # fmt: skip
    ops.subscribe(f"{A}/state")
    ops.subscribe(f"{A}/cmd/res")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for topic, payload in ops.received(0.5):
            if topic.endswith("/state") and json.loads(payload).get("online"):
                return ops
    pytest.fail("gw-a never came online")


ATTACKERS = {
    "receiver": ("password", "rx-d01"),
    "receiver-other-district": ("password", "rx-d02"),
    "operator": ("password", "ops"),
    "other-gateway-certificate": ("cert", "gw-b"),
    "other-gateway-password": ("password", "gw-b"),
}


@pytest.mark.parametrize("attacker", list(ATTACKERS))
def test_no_account_takes_over_a_gateways_client_id(fleet, broker, gateway, operator, attacker):
    """Another account connecting again and again with client id `gw-a`, clean start: gw-a's
    own connection stays up (no takeover, no will, no reconnect) and answers every command."""
    listener, account = ATTACKERS[attacker]
    before = takeovers(broker)
    sent = 10
    attacks = threading.Thread(target=_attack, args=(fleet, broker, listener, account, 12))
    attacks.start()
    for n in range(sent):
        operator.client.publish(f"{A}/cmd/ping", json.dumps({"id": n}), qos=1)
        time.sleep(0.1)
    attacks.join(30)
    answers, states = set(), []
    deadline = time.monotonic() + 6
    while len(answers) < sent and time.monotonic() < deadline:
        for topic, payload in operator.received(0.5):
            if topic.endswith("/cmd/res"):
                answers.add(json.loads(payload)["id"])
            else:
                states.append(json.loads(payload)["online"])
    states += [json.loads(p)["online"] for t, p in operator.received(0.3) if t.endswith("state")]
    assert takeovers(broker) == before, f"{account} took over gw-a's connection"
    assert states == [], f"gw-a went offline and came back: {states}"
    assert answers == set(range(sent)), f"commands lost: {sorted(set(range(sent)) - answers)}"


def _attack(fleet, broker, listener: str, account: str, times: int) -> None:
    for _ in range(times):
        if listener == "cert":
            peer = Peer(fleet, broker.cert_port, gateway=account, client_id="gw-a")
        else:
            peer = Peer(fleet, broker.password_port, username=account,
                        password=password(fleet, account), client_id="gw-a")  # fmt: skip
        try:
            assert peer.connect(), f"{account} was refused: {peer.connect_reason}"
            time.sleep(0.05)
        finally:
            peer.close()
        time.sleep(0.05)


# --- client ids are forced to the account ---------------------------------------------------------


def test_a_client_id_is_the_accounts_own_on_both_listeners(fleet, broker, peers):
    """Whatever client id a client asks for, the broker uses its username (certificate CN on
    the gateways' listener): what the log calls it is the account."""
    connect(peers, fleet, broker.cert_port, gateway="gw-b", client_id="gw-c")
    connect(peers, fleet, broker.password_port, username="rx-d02",
            password=password(fleet, "rx-d02"), client_id="gw-c")  # fmt: skip
    log = broker.log()
    assert " as gw-c " not in log, "a client connected as gw-c"
    assert " as gw-b " in log and " as rx-d02 " in log


def test_a_second_connection_of_one_account_replaces_the_first(fleet, broker, peers):
    """The price of forced ids: one connection per account (docs/provisioning.md); two
    receivers sharing alarms need two accounts."""
    first = connect(peers, fleet, broker.password_port, username="rx-d02",
                    password=password(fleet, "rx-d02"), client_id="rx-one")  # fmt: skip
    first.client.reconnect_delay_set(30, 30)  # stay off once replaced
    connect(peers, fleet, broker.password_port, username="rx-d02",
            password=password(fleet, "rx-d02"), client_id="rx-two")  # fmt: skip
    deadline = time.monotonic() + 5
    while first.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.disconnects == 1


# --- gateway ids and account names never collide --------------------------------------------------


def _inventory_with(*rows: str) -> str:
    return INVENTORY + "".join(f"{r},d01,w9,fire_point,20000000000000{i:02x},,,dhcp\n"
                               for i, r in enumerate(rows))  # fmt: skip


@pytest.mark.parametrize(
    ("gateway_id", "why"),
    [
        ("ops", "operator account 'ops'"),
        ("rx-d02", "receiver account 'rx-d02'"),
        ("rx-d77", "reserved for the per-district receiver accounts"),
        ("bridge", "reserved"),
        ("OPS", "operator account 'ops'"),
    ],
)
def test_enrollment_refuses_a_gateway_id_that_is_an_account_name(tmp_path, gateway_id, why):
    fleet = make_fleet(tmp_path / "fleet", _inventory_with(gateway_id))
    with pytest.raises(FleetError) as info:
        run(fleet)
    message = str(info.value)
    assert f"inventory.csv:5: id: '{gateway_id}'" in message, message
    assert why in message, message
    assert not fleet.bundle(gateway_id).exists() and not (fleet.broker_dir / "acl").exists()


def test_enrollment_refuses_an_account_named_like_a_gateway(fleet, tmp_path):
    changed = copy_fleet(fleet, tmp_path / "fleet")
    acl = (changed.broker_dir / "acl").read_bytes()
    text = changed.settings_path.read_text()
    changed.settings_path.write_text(text + '\n[[accounts.receiver]]\nname = "gw-b"\n'
                                     'districts = ["d01"]\n')  # fmt: skip
    line = len(text.splitlines()) + 3
    with pytest.raises(FleetError) as info:
        run(changed)
    message = str(info.value)
    assert f"receiver account 'gw-b' ({changed.settings_path}:{line})" in message, message
    assert "inventory.csv:3: id: 'gw-b'" in message, message
    assert (changed.broker_dir / "acl").read_bytes() == acl


def test_enrollment_refuses_an_account_named_twice(tmp_path):
    fleet = make_fleet(tmp_path / "fleet", settings_extra='\n[[accounts.receiver]]\nname = "ops"\n'
                       'districts = ["d01"]\n')  # fmt: skip
    with pytest.raises(FleetError, match="'ops' is both an operator and a receiver"):
        run(fleet)


# --- retained events ------------------------------------------------------------------------------


def test_a_retained_alarm_is_not_replayed_to_consumers_and_dies_with_the_gateway(
    fleet, tmp_path, peers
):
    """Mosquitto 2.0 cannot refuse a retained publish on one topic (docs/provisioning.md), and
    2.0.11 replays retained messages even to shared subscriptions. What holds: a consumer that
    subscribes with Retain Handling 2 ("send no retained messages") gets no replay, shared or
    not; a replayed message carries the retain flag (events never do), so a consumer can drop
    it; and once the gateway is removed, `check_retain_source` drops what it left retained."""
    changed = copy_fleet(fleet, tmp_path / "fleet")
    c = "wg/v1/d02/w1/gw-c"
    no_replay = mqtt.SubscribeOptions(qos=1, retainHandling=2)
    with fleet_broker(changed, tmp_path / "broker") as broker:
        gw_c = connect(peers, changed, broker.cert_port, gateway="gw-c")
        gw_c.client.publish(f"{c}/evt/alarm", b"stale-fire", qos=1, retain=True).wait_for_publish(5)
        rx = connect(peers, changed, broker.password_port, username="rx-d02",
                     password=password(changed, "rx-d02"))  # fmt: skip
        ops = connect(peers, changed, broker.password_port, username="ops",
                      password=password(changed, "ops"))  # fmt: skip
        for peer, topic in ((rx, "$share/brigade/wg/v1/d02/+/+/evt/alarm"), (ops, f"{c}/evt/#")):
            _, mid = peer.client.subscribe(topic, options=no_replay)
            peer._wait(mid)
        assert rx.received(0.5) == [] and ops.received(0.3) == []

        ops.client.subscribe(f"{c}/evt/alarm", qos=1)  # no Retain Handling: the limitation
        replayed = ops.messages.get(timeout=2)
        assert (replayed.topic, replayed.payload, replayed.retain) == (
            f"{c}/evt/alarm", b"stale-fire", True)  # fmt: skip
        assert gw_c.publish(f"{c}/evt/alarm", b"live-fire").is_failure is False
        live = rx.messages.get(timeout=2)
        assert (live.payload, live.retain) == (b"live-fire", False)  # live events: no flag

        inventory = (changed.root / "inventory.csv").read_text()
        run(changed, "\n".join(x for x in inventory.splitlines() if not x.startswith("gw-c")))
        broker.proc.send_signal(signal.SIGHUP)  # reloads passwd and acl, as on a real broker
        time.sleep(0.5)
        late = connect(peers, changed, broker.password_port, username="ops",
                       password=password(changed, "ops"), client_id="late")  # fmt: skip
        late.subscribe(f"{c}/evt/alarm")
        assert late.received(0.5) == []


def test_verify_does_not_consume_a_gateways_queued_commands(fleet, broker, peers):
    """verify connects as the gateway (the broker forces the client id): it resumes the
    gateway's session without acknowledging anything, so a command queued while the gateway
    was offline still reaches the gateway."""
    from provisioning.verify import verify

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    gw = Peer(fleet, broker.cert_port, gateway="gw-b", client_id="gw-b")
    gw.client.connect("127.0.0.1", broker.cert_port, clean_start=True, properties=props)
    gw.client.loop_start()
    gw._connack.wait(5)
    gw.subscribe("wg/v1/d01/w2/gw-b/cmd/#")
    gw.close()
    ops = connect(peers, fleet, broker.password_port, username="ops",
                  password=password(fleet, "ops"))  # fmt: skip
    assert ops.publish("wg/v1/d01/w2/gw-b/cmd/status", b"while-offline").is_failure is False
    result = verify(fleet.bundle("gw-b"), host="127.0.0.1", port=broker.cert_port)
    assert result.ok, result.checks
    back = Peer(fleet, broker.cert_port, gateway="gw-b", client_id="gw-b")
    peers.append(back)
    back.client.connect("127.0.0.1", broker.cert_port, clean_start=False, properties=props)
    back.client.loop_start()
    assert back.received(2) == [("wg/v1/d01/w2/gw-b/cmd/status", b"while-offline")]
