"""Provisioned artifacts in a private real Mosquitto: the generated conf, password file, ACL,
server certificate and CRL, with gateways using their bundles' keys and certificates."""

from __future__ import annotations

import ssl
import time

import pytest

from provisioning.broker import COMMANDS
from provisioning.verify import verify
from tests.test_provision_support import (
    Peer,
    bundle_file,
    copy_fleet,
    fleet_broker,
    make_fleet,
    run,
)

A = "wg/v1/d01/w1/gw-a"
B = "wg/v1/d01/w2/gw-b"
C = "wg/v1/d02/w1/gw-c"


EXTRA_COMMAND = "fw-update"  # one a newer gateway might answer, granted in fleet.toml
#: per-person operators scoped to a district, and an integrator's read-only account (issue 9)
ACCOUNTS = """
[[accounts.operator]]
name = "anna.k"
districts = ["d01"]

[[accounts.backend]]
name = "records"
districts = ["d01"]
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"), settings_extra=ACCOUNTS)
    text = fleet.settings_path.read_text()
    assert "# extra_commands = []" in text
    text = text.replace("# extra_commands = []", f'extra_commands = ["{EXTRA_COMMAND}"]')
    fleet.settings_path.write_text(text)
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


def connect(peers, fleet, port, **kw) -> Peer:
    peer = Peer(fleet, port, **kw)
    assert peer.connect(), f"refused: {peer.connect_reason}"
    peers.append(peer)
    return peer


def refused(peer: Peer) -> bool:
    """With TLS 1.3 a refused client certificate may surface after the handshake, as a closed
    connection without CONNACK, rather than as an exception from connect()."""
    try:
        return not peer.connect()
    except (ssl.SSLError, OSError):
        return True


def account_password(fleet, name: str) -> str:
    return (fleet.accounts_dir / f"{name}.password").read_text().strip()


def test_gateway_events_reach_only_the_receiver_of_its_district(fleet, broker, peers):
    rx1 = connect(peers, fleet, broker.password_port, username="rx-d01",
                  password=account_password(fleet, "rx-d01"))  # fmt: skip
    rx2 = connect(peers, fleet, broker.password_port, username="rx-d02",
                  password=account_password(fleet, "rx-d02"))  # fmt: skip
    for rx, district in ((rx1, "d01"), (rx2, "d02")):
        for leaf in ("evt/alarm", "evt/fault", "state"):
            rx.subscribe(f"wg/v1/{district}/+/+/{leaf}")
        rx.subscribe("wg/v1/+/+/+/evt/#")  # wider than the ACL allows: must not leak
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_c = connect(peers, fleet, broker.cert_port, gateway="gw-c")

    assert gw_a.publish(f"{A}/evt/alarm", b"fire-a").is_failure is False
    assert gw_a.publish(f"{A}/evt/reading", b"reading-a").is_failure is False
    assert gw_c.publish(f"{C}/evt/alarm", b"fire-c").is_failure is False

    got1 = {(t, p) for t, p in rx1.received()}
    got2 = {(t, p) for t, p in rx2.received(0.3)}
    assert got1 == {(f"{A}/evt/alarm", b"fire-a")}
    assert got2 == {(f"{C}/evt/alarm", b"fire-c")}


def test_gateway_cannot_publish_into_another_subtree(fleet, broker, peers):
    ops = connect(peers, fleet, broker.password_port, username="ops",
                  password=account_password(fleet, "ops"))  # fmt: skip
    ops.subscribe("wg/v1/#")
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    # (mosquitto 2.0.11 answers each refused publish at once, then holds the next PUBACK ~1 s)
    for topic in (f"{B}/evt/alarm", f"{C}/state", "wg/v1/d01/w1/gw-a2/evt/alarm"):
        code = gw_a.publish(topic, b"forged")
        assert code.is_failure, f"{topic}: broker accepted a forged publish ({code})"
    assert gw_a.publish(f"{A}/state", b"mine").is_failure is False
    assert ops.received() == [(f"{A}/state", b"mine")]


def test_gateway_reads_its_commands_and_not_anothers(fleet, broker, peers):
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_b = connect(peers, fleet, broker.cert_port, gateway="gw-b")
    gw_a.subscribe(f"{A}/cmd/#")
    gw_a.subscribe(f"{B}/cmd/#")  # B's commands: refused or never delivered
    gw_a.subscribe("wg/v1/#")
    gw_b.subscribe(f"{B}/cmd/#")
    ops = connect(peers, fleet, broker.password_port, username="ops",
                  password=account_password(fleet, "ops"))  # fmt: skip
    assert ops.publish(f"{B}/cmd/status", b"for-b").is_failure is False
    assert ops.publish(f"{A}/cmd/ping", b"for-a").is_failure is False
    assert gw_b.received() == [(f"{B}/cmd/status", b"for-b")]
    assert set(gw_a.received(0.3)) == {(f"{A}/cmd/ping", b"for-a")}


def test_receiver_acks_in_its_district_only_and_cannot_command(fleet, broker, peers):
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_a.subscribe(f"{A}/ack")
    rx2 = connect(peers, fleet, broker.password_port, username="rx-d02",
                  password=account_password(fleet, "rx-d02"))  # fmt: skip
    rx1 = connect(peers, fleet, broker.password_port, username="rx-d01",
                  password=account_password(fleet, "rx-d01"))  # fmt: skip
    assert rx2.publish(f"{A}/ack", b"wrong-district").is_failure
    assert rx1.publish(f"{A}/cmd/test-alarm", b"not-an-operator").is_failure
    assert rx1.publish(f"{A}/ack", b"ack-1").is_failure is False
    assert gw_a.received() == [(f"{A}/ack", b"ack-1")]


def test_operators_send_every_command_but_cannot_forge_answers(fleet, broker, peers):
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_a.subscribe(f"{A}/cmd/#")  # what the gateway subscribes (cmd/res included)
    ops = connect(peers, fleet, broker.password_port, username="ops",
                  password=account_password(fleet, "ops"))  # fmt: skip
    ops.subscribe(f"{A}/cmd/res")
    # (a refused publish makes mosquitto 2.0.11 hold the next PUBACK ~1 s: refusals go last)
    for name in (*COMMANDS, EXTRA_COMMAND):
        assert ops.publish(f"{A}/cmd/{name}", name.encode()).is_failure is False, name
    assert gw_a.received() == [(f"{A}/cmd/{n}", n.encode()) for n in (*COMMANDS, EXTRA_COMMAND)]
    answer = (f"{A}/cmd/res", b'{"cmd":"ping","ok":true}')
    assert gw_a.publish(*answer).is_failure is False
    assert ops.received() == [answer]  # operators read the answers...
    assert gw_a.received(0.3) == [answer]  # (the gateway sees its own; edge/runtime skips it)
    forged = ops.publish(f"{A}/cmd/res", b'{"cmd":"ping","ok":true,"forged":1}')
    assert forged.is_failure, f"an operator wrote a gateway's answer ({forged})"
    assert ops.publish(f"{A}/cmd/reboot", b"not a command").is_failure
    assert ops.received(0.5) == [] and gw_a.received(0.3) == []


def test_the_acl_grants_exactly_the_commands_a_gateway_answers(tmp_path):
    """A command added to the gateway without adding it to broker.COMMANDS fails here."""
    from edge.config import from_dict
    from edge.runtime import Gateway
    from provisioning.inventory import parse_sensors
    from tests.test_provision_support import MODBUS_BUS, NODE_LINE

    ports = parse_sensors(f"{NODE_LINE};{MODBUS_BUS}")
    config = from_dict(
        {
            "gateway": {"id": "gw-a", "district": "d01", "ward": "w1"},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
            "serial": {"ports": [p.config_entry() for p in ports]},
        }
    )
    gateway = Gateway(config)
    try:
        pipelines = gateway.build_pipelines()  # built, not run: no port is opened
        assert {p.name for p in pipelines} >= {"serial-nodes1", "serial-modbus1"}
        assert sorted(gateway._commands) == sorted(COMMANDS)
    finally:
        gateway.outbox.close()


def test_no_write_grant_covers_cmd_res_and_extra_commands_cannot_name_it(fleet, tmp_path):
    from paho.mqtt.client import topic_matches_sub

    from provisioning.fleet import FleetError, load_settings

    writes: dict[str, list[str]] = {}
    for line in (fleet.broker_dir / "acl").read_text().splitlines():
        if line.startswith("user "):
            user = writes.setdefault(line.split()[1], [])
        elif line.startswith("topic write "):
            user.append(line.split()[2])
    answers = [f"{base}/cmd/res" for base in (A, B, C)]
    may_answer = {
        user: [t for t in answers if any(topic_matches_sub(g, t) for g in grants)]
        for user, grants in writes.items()
    }
    assert may_answer == {
        "gw-a": [f"{A}/cmd/res"], "gw-b": [f"{B}/cmd/res"], "gw-c": [f"{C}/cmd/res"],
        "ops": [], "rx-d01": [], "rx-d02": [], "anna.k": [], "records": [],
    }  # fmt: skip
    assert "user records" in (fleet.broker_dir / "acl").read_text()
    assert "records" not in writes["records"] and writes["records"] == []  # writes nothing
    path = tmp_path / "fleet.toml"
    for bad, why in (
        ('["res"]', "cmd/res carries the gateways' answers"),
        ('["#"]', "not a valid topic segment"),
        ('["sensor/reset"]', "not a valid topic segment"),
    ):
        path.write_text(f'[broker]\nhost = "x"\n[accounts]\nextra_commands = {bad}\n')
        with pytest.raises(FleetError, match="accounts.extra_commands") as info:
            load_settings(path)
        assert why in str(info.value) and "fleet.toml:4:" in str(info.value)


def _publish_everything(gw: Peer, base: str) -> set[tuple[str, bytes]]:
    """Every leaf a gateway writes, one message each; returns what was sent."""
    sent = set()
    for leaf in ("evt/alarm", "evt/fault", "evt/smoke", "evt/person", "evt/reading", "tele",
                 "snap/cam1", "state", "cmd/res"):  # fmt: skip
        payload = f"{leaf}@{base}".encode()
        assert gw.publish(f"{base}/{leaf}", payload).is_failure is False, leaf
        sent.add((f"{base}/{leaf}", payload))
    return sent


def _only(sent: set[tuple[str, bytes]], *leaves: str) -> set[tuple[str, bytes]]:
    return {(t, p) for t, p in sent if any(t.endswith("/" + leaf) for leaf in leaves)}


def test_receiver_reads_what_the_operations_center_ingests(fleet, broker, peers):
    """The receiver (the ingest service) reads alarms, faults, camera smoke, telemetry (gateway
    liveness), state and snapshots of its district: nothing else, nothing of another district."""
    rx1 = connect(peers, fleet, broker.password_port, username="rx-d01",
                  password=account_password(fleet, "rx-d01"))  # fmt: skip
    rx1.subscribe("wg/v1/#")  # wider than the ACL: the broker filters what it delivers
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_c = connect(peers, fleet, broker.cert_port, gateway="gw-c")
    sent_a = _publish_everything(gw_a, A)
    _publish_everything(gw_c, C)
    got = set(rx1.received())
    assert got == _only(sent_a, "evt/alarm", "evt/fault", "evt/smoke", "tele", "snap/cam1",
                        "state")  # fmt: skip


def test_receiver_writes_only_acks(fleet, broker, peers):
    watch = connect(peers, fleet, broker.password_port, username="ops",
                    password=account_password(fleet, "ops"))  # fmt: skip
    watch.subscribe("wg/v1/#")
    rx1 = connect(peers, fleet, broker.password_port, username="rx-d01",
                  password=account_password(fleet, "rx-d01"))  # fmt: skip
    assert rx1.publish(f"{A}/ack", b"ack").is_failure is False
    # (each refusal makes mosquitto 2.0.11 hold the next PUBACK ~1 s: few of them, last)
    for topic in (f"{A}/cmd/ping", f"{A}/evt/alarm", f"{A}/tele"):
        code = rx1.publish(topic, b"forged")
        assert code.is_failure, f"{topic}: a receiver wrote it ({code})"
    assert watch.received() == [(f"{A}/ack", b"ack")]


def test_backend_reads_its_districts_events_and_writes_nothing(fleet, broker, peers):
    watch = connect(peers, fleet, broker.password_port, username="ops",
                    password=account_password(fleet, "ops"))  # fmt: skip
    watch.subscribe("wg/v1/#")
    backend = connect(peers, fleet, broker.password_port, username="records",
                      password=account_password(fleet, "records"))  # fmt: skip
    backend.subscribe("wg/v1/#")
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_c = connect(peers, fleet, broker.cert_port, gateway="gw-c")
    sent_a = _publish_everything(gw_a, A)
    sent_c = _publish_everything(gw_c, C)
    assert set(backend.received()) == _only(sent_a, "evt/alarm", "evt/fault", "evt/smoke",
                                            "evt/person", "evt/reading", "tele", "snap/cam1",
                                            "state")  # fmt: skip
    assert set(watch.received(0.3)) == sent_a | sent_c
    # QoS 1: refused with a reason code; QoS 0: dropped silently. Either way nobody gets it.
    for topic in (f"{A}/cmd/ping", f"{A}/ack"):
        code = backend.publish(topic, b"from-backend")
        assert code.is_failure, f"{topic}: a backend wrote it ({code})"
    # the connection a refused QoS 1 publish was on may close just after its PUBACK 0x87
    # (Mosquitto logs "bad socket read/write"; paho reconnects): publish until one goes out
    deadline = time.monotonic() + 10
    while True:
        try:
            backend.client.publish(f"{A}/evt/alarm", b"from-backend-qos0", qos=0).wait_for_publish(
                5
            )
            break
        except RuntimeError:  # "not currently connected" / "connection was lost"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert watch.received(0.5) == []


def test_operator_commands_its_own_district_only(fleet, broker, peers):
    gw_a = connect(peers, fleet, broker.cert_port, gateway="gw-a")
    gw_c = connect(peers, fleet, broker.cert_port, gateway="gw-c")
    gw_a.subscribe(f"{A}/cmd/#")
    gw_c.subscribe(f"{C}/cmd/#")
    anna = connect(peers, fleet, broker.password_port, username="anna.k",
                   password=account_password(fleet, "anna.k"))  # fmt: skip
    anna.subscribe("wg/v1/#")
    assert anna.publish(f"{A}/cmd/ping", b"for-a").is_failure is False
    assert gw_a.received() == [(f"{A}/cmd/ping", b"for-a")]
    assert gw_c.publish(f"{C}/state", b"c-online").is_failure is False
    assert gw_a.publish(f"{A}/cmd/res", b"a-answer").is_failure is False
    assert anna.received() == [(f"{A}/cmd/ping", b"for-a"), (f"{A}/cmd/res", b"a-answer")]
    code = anna.publish(f"{C}/cmd/ping", b"for-c")
    assert code.is_failure, f"an operator of d01 commanded d02 ({code})"
    assert gw_c.received(0.5) == []


def test_new_fleets_have_no_wildcard_operator(tmp_path):
    """A fleet.toml from `provision init` has no operator; per-person entries need districts."""
    from provisioning.fleet import FLEET_TOML_TEMPLATE, FleetError, load_settings

    path = tmp_path / "fleet.toml"
    text = FLEET_TOML_TEMPLATE.format(host="h", ca_name="c")
    path.write_text(text)
    assert load_settings(path).accounts.operator == []
    uncommented = text.replace("# [[accounts.", "[[accounts.").replace("# name = ", "name = ")
    path.write_text(uncommented.replace("# districts = ", "districts = "))
    accounts = load_settings(path).accounts
    assert [(o.name, o.districts) for o in accounts.operator] == [("anna.k", ["d03"])]
    assert [(b.name, b.districts) for b in accounts.backend] == [("police-records", ["d03", "d04"])]
    path.write_text('[broker]\nhost = "x"\n[[accounts.operator]]\nname = "anna.k"\n')
    with pytest.raises(FleetError, match=r"fleet.toml:3.*districts"):
        load_settings(path)
    path.write_text('[broker]\nhost = "x"\n[[accounts.backend]]\nname = "b"\n'
                    'districts = ["d/1"]\n')  # fmt: skip
    with pytest.raises(FleetError, match="not a valid topic segment"):
        load_settings(path)


def test_passwords_hashed_by_us_are_accepted_and_wrong_ones_refused(fleet, broker, peers):
    gw_pw = bundle_file(fleet, "gw-b", "mqtt.password").read_text().strip()
    gw_b = connect(peers, fleet, broker.password_port, username="gw-b", password=gw_pw)
    assert gw_b.publish(f"{B}/tele", b"via-password").is_failure is False

    wrong = Peer(fleet, broker.password_port, username="gw-b", password=gw_pw + "x")
    peers.append(wrong)
    assert refused(wrong)
    anonymous = Peer(fleet, broker.password_port)
    peers.append(anonymous)
    assert refused(anonymous)


def test_certificate_listener_demands_a_fleet_certificate(fleet, broker, pki, peers):
    without = Peer(fleet, broker.cert_port, username="gw-a", password="irrelevant")
    peers.append(without)
    assert refused(without)
    # A certificate with the right CN from another CA: refused in the handshake.
    cert, key = pki.issue("gw-a")
    foreign = Peer(fleet, broker.cert_port, cert=cert, key=key)
    peers.append(foreign)
    assert refused(foreign)


def test_verify_connects_to_the_live_broker(fleet, broker):
    result = verify(fleet.bundle("gw-a"), host="127.0.0.1", port=broker.cert_port)
    assert result.ok, result.checks
    assert any(c.name == "broker" and c.status == "ok" for c in result.checks)


def test_revoked_and_rekeyed_gateways_are_refused(fleet, tmp_path, peers):
    changed = copy_fleet(fleet, tmp_path / "fleet")
    old_b = (
        bundle_file(changed, "gw-b", "tls/gateway.crt"),
        bundle_file(changed, "gw-b", "tls/gateway.key"),
    )
    kept = tmp_path / "old-b"
    kept.mkdir()
    old_cert, old_key = kept / "b.crt", kept / "b.key"
    old_cert.write_bytes(old_b[0].read_bytes())
    old_key.write_bytes(old_b[1].read_bytes())
    old_c = (tmp_path / "c.crt", tmp_path / "c.key")
    old_c[0].write_bytes(bundle_file(changed, "gw-c", "tls/gateway.crt").read_bytes())
    old_c[1].write_bytes(bundle_file(changed, "gw-c", "tls/gateway.key").read_bytes())
    old_c_password = bundle_file(changed, "gw-c", "mqtt.password").read_text().strip()

    inventory = (changed.root / "inventory.csv").read_text()
    inventory = inventory.replace("10000000000000b2", "10000000000000b9")  # board replaced
    inventory = "\n".join(line for line in inventory.splitlines() if not line.startswith("gw-c"))
    report = run(changed, inventory + "\n")
    assert [r.id for r in report.plan.revoke] == ["gw-c"]
    assert [row.id for row, _, _ in report.plan.rekey] == ["gw-b"]
    assert "crl.pem" in report.broker_changed

    with fleet_broker(changed, tmp_path / "broker") as broker:
        for cert, key in ((old_c[0], old_c[1]), (old_cert, old_key)):
            peer = Peer(changed, broker.cert_port, cert=cert, key=key)
            peers.append(peer)
            assert refused(peer), f"{cert.name} was accepted after revocation"
        gone = Peer(changed, broker.password_port, username="gw-c", password=old_c_password)
        peers.append(gone)
        assert refused(gone)
        connect(peers, changed, broker.cert_port, gateway="gw-b")  # the new identity works
        connect(peers, changed, broker.cert_port, gateway="gw-a")  # others are untouched
