"""`wardgate cmd` (central/opcmd.py) as an operator runs it: a real process against a private
Mosquitto loaded with the fleet's generated ACL, per-person operator accounts scoped to
districts, and gw-a as a real `wardgate run` process on its bundle's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib

import pytest
import tomli_w

from tests.harness import REPO, GatewayProcess
from tests.mqtt_broker import free_port
from tests.test_provision_support import Peer, bundle_file, fleet_broker, make_fleet, run

A = "wg/v1/d01/w1/gw-a"
#: a new fleet (no `ops`): anna.k answers for d01, ben.m for d02, the shift lead for all
ACCOUNTS = """
[[accounts.operator]]
name = "anna.k"
districts = ["d01"]

[[accounts.operator]]
name = "ben.m"
districts = ["d02"]

[[accounts.operator]]
name = "lead"
districts = ["*"]
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"), settings_extra=ACCOUNTS, legacy_ops=False)
    run(fleet)
    return fleet


@pytest.fixture(scope="module")
def broker(fleet, tmp_path_factory):
    with fleet_broker(fleet, tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def gateway(fleet, broker, tmp_path_factory):
    """gw-a's bundle config.toml (mutual TLS) run by `wardgate run`; yields once it is online."""
    work = tmp_path_factory.mktemp("gw")
    etc = bundle_file(fleet, "gw-a", "config.toml").parent
    data = tomllib.loads((etc / "config.toml").read_text())
    data.pop("serial", None)  # the bundle's serial lines do not exist here
    data.pop("vision", None)
    data["uplink"].update(host="127.0.0.1", port=broker.cert_port, keepalive_s=10,
                          password_file=str(etc / "mqtt.password"),
                          tls={"ca": str(etc / "tls/ca.crt"), "cert": str(etc / "tls/gateway.crt"),
                               "key": str(etc / "tls/gateway.key")})  # fmt: skip
    data["outbox"] = {"path": str(work / "outbox.sqlite3")}
    path = work / "config.toml"
    path.write_text(tomli_w.dumps(data))
    proc = GatewayProcess(path).start()
    try:
        watch = Peer(
            fleet, broker.password_port, username="rx-d01", password=password(fleet, "rx-d01")
        )
        assert watch.connect()
        try:
            watch.subscribe(f"{A}/state")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any(json.loads(p).get("online") for _, p in watch.received(0.5)):
                    break
            else:
                pytest.fail(f"gw-a never came online:\n{proc.log()}")
        finally:
            watch.close()
        yield proc
    finally:
        proc.terminate()


@pytest.fixture
def watcher(fleet, broker):
    """The shift lead's account, reading every command and answer in the city."""
    peer = Peer(fleet, broker.password_port, username="lead", password=password(fleet, "lead"))
    assert peer.connect()
    peer.subscribe("wg/v1/+/+/+/cmd/#")
    yield peer
    peer.close()


def password(fleet, name: str) -> str:
    return (fleet.accounts_dir / f"{name}.password").read_text().strip()


def wardgate_cmd(fleet, broker, account: str, *argv: str, port: int | None = None):
    """`wardgate cmd ...` as a process, as the operator `account`."""
    secret = fleet.accounts_dir / f"{account}.password"
    args = [sys.executable, "-m", "edge.cli", "cmd", *argv,
            "--host", "127.0.0.1", "--port", str(port or broker.password_port),
            "--server-name", "localhost", "--ca", str(fleet.ca_dir / "ca.crt"),
            "--username", account, "--password-file", str(secret)]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ})  # fmt: skip


def test_ping_finds_the_gateway_by_its_retained_state(fleet, broker, gateway, watcher):
    done = wardgate_cmd(fleet, broker, "anna.k", "gw-a", "ping")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is True and reply["cmd"] == "ping" and reply["result"]["pong"] is True
    assert "gw-a (d01/w1, retained state) ping: ok" in done.stderr
    sent = [(t, json.loads(p)) for t, p in watcher.received()]
    assert [t for t, _ in sent] == [f"{A}/cmd/ping", f"{A}/cmd/res"]
    assert sent[1][1]["id"] == sent[0][1]["id"]  # the request's id came back with the answer


def test_registry_and_its_csv_export_locate_the_gateway(fleet, broker, gateway, tmp_path):
    export = tmp_path / "status.csv"
    subprocess.run([sys.executable, "-m", "edge.cli", "provision", "status", str(fleet.root),
                    "--csv", str(export)], check=True, capture_output=True, cwd=REPO)  # fmt: skip
    for registry in (fleet.registry_path, export):
        done = wardgate_cmd(fleet, broker, "anna.k", "gw-a", "test-alarm", "drill",
                            "--registry", str(registry), "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["ok"] is True and len(reply["result"]["event_id"]) == 32
        assert f"registry {registry.name}" in done.stderr


def test_sensor_reset_is_sent_under_the_gateways_name_and_an_error_answer_fails(
    fleet, broker, gateway
):
    """gw-a runs without serial lines here: it answers `sensor_reset` (the underscore name the
    alias maps to) with ok=false, and the tool exits 1 printing the answer."""
    done = wardgate_cmd(fleet, broker, "anna.k", "gw-a", "sensor-reset", "n07")
    assert done.returncode == 1, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is False and reply["cmd"] == "sensor_reset"
    assert "unknown command 'sensor_reset'" in reply["error"]
    assert "ERROR: unknown command 'sensor_reset'" in done.stderr


def test_an_unknown_gateway_is_refused_and_nothing_is_published(fleet, broker, gateway, watcher):
    done = wardgate_cmd(fleet, broker, "anna.k", "gw-zz", "ping", "--lookup-timeout", "1")
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown gateway 'gw-zz'" in done.stderr and "nothing was sent" in done.stderr
    done = wardgate_cmd(fleet, broker, "lead", "gw-a", "ping", "--district", "d02",
                        "--lookup-timeout", "1")  # fmt: skip
    assert done.returncode == 2 and "(district d02;" in done.stderr, done.stderr
    # by the registry: refused before connecting (this port has no broker)
    done = wardgate_cmd(fleet, broker, "anna.k", "GW-A", "ping", "--registry",
                        str(fleet.registry_path), port=free_port())  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unknown gateway 'GW-A'" in done.stderr and "did you mean gw-a?" in done.stderr
    done = wardgate_cmd(fleet, broker, "anna.k", "gw-a", "reboot")
    assert done.returncode == 2 and "unknown command 'reboot'" in done.stderr
    assert watcher.received(0.5) == []


def test_an_operator_of_another_district_is_refused_by_the_broker(fleet, broker, gateway, watcher):
    # ben.m (d02) cannot see gw-a's state: to him it is unknown
    done = wardgate_cmd(fleet, broker, "ben.m", "gw-a", "ping", "--lookup-timeout", "1")
    assert done.returncode == 2 and "unknown gateway 'gw-a'" in done.stderr
    # told where it is, he sends the command and the broker refuses it
    done = wardgate_cmd(fleet, broker, "ben.m", "gw-a", "test-alarm", "--registry",
                        str(fleet.registry_path))  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "the broker refused the command wg/v1/d01/w1/gw-a/cmd/test-alarm" in done.stderr
    assert "Not authorized (0x87): ben.m may not send test-alarm to district d01" in done.stderr
    assert watcher.received(0.5) == []  # the gateway never got it, so it raised no alarm


def test_refused_credentials_and_a_silent_gateway(fleet, broker, gateway, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    args = [sys.executable, "-m", "edge.cli", "cmd", "gw-a", "ping", "--host", "127.0.0.1",
            "--port", str(broker.password_port), "--server-name", "localhost",
            "--ca", str(fleet.ca_dir / "ca.crt"), "--username", "anna.k",
            "--password-file", str(wrong)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1 and done.stdout == ""
    assert "refused anna.k" in done.stderr and "--password-file" in done.stderr, done.stderr
    # gw-b is enrolled but never ran: the command is delivered to the broker, nobody answers
    done = wardgate_cmd(fleet, broker, "anna.k", "gw-b", "ping", "--timeout", "1",
                        "--registry", str(fleet.registry_path))  # fmt: skip
    assert done.returncode == 1 and "no answer from gw-b within 1 s" in done.stderr
    # gw-c's retained state says it is offline: the tool says so, sends, and times out
    gw_c = Peer(fleet, broker.cert_port, gateway="gw-c")
    assert gw_c.connect()
    try:
        state = json.dumps({"online": False, "gateway": "gw-c"}).encode()
        info = gw_c.client.publish("wg/v1/d02/w1/gw-c/state", state, qos=1, retain=True)
        info.wait_for_publish(5)
    finally:
        gw_c.close()
    done = wardgate_cmd(fleet, broker, "ben.m", "gw-c", "status", "--timeout", "1")
    assert done.returncode == 1, done.stderr
    assert "gw-c (d02/w1, retained state) is offline" in done.stderr
    assert "no answer from gw-c within 1 s" in done.stderr
