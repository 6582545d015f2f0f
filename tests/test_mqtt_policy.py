"""The one MQTT connection policy (protocol/mqtt.py) and the one backoff (protocol/retry.py),
against the suite's real Mosquitto (TLS listener, password accounts, ACL)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import pytest

from protocol import mqtt as policy
from protocol import retry
from protocol.retry import Backoff
from tests.conftest import WATCHER_PASSWORD, WATCHER_USER
from tests.pki import TestPKI


def _endpoint(broker, pki, **kw) -> policy.Endpoint:
    values = {
        "host": broker.host,
        "port": broker.tls_port,
        "tls": policy.Tls(pki.ca_path),
        "username": WATCHER_USER,
        "password": WATCHER_PASSWORD,
        "client_id": "policy-test",
        "keepalive_s": 5,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "setting": "test",
    }
    values.update(kw)
    return policy.Endpoint(**values)


def _connack(endpoint: policy.Endpoint, timeout: float = 5.0):
    """Connect once (no reconnects): the CONNACK's reason code and the socket's TCP_NODELAY."""
    done, got = threading.Event(), {}
    client = policy.new_client(endpoint)

    def on_connect(c, userdata, flags, reason_code, properties):
        got["rc"] = reason_code
        sock = c.socket()
        raw = getattr(sock, "_sock", sock)
        got["nodelay"] = raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *a: done.set()
    policy.connect(client, endpoint)
    client.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_good_credentials_over_tls_connect(broker, pki):
    got = _connack(_endpoint(broker, pki, clean_start=False, session_expiry_s=60))
    assert not got["rc"].is_failure, got
    assert got["nodelay"] == 1


def test_the_server_name_is_verified_instead_of_the_host(broker, pki):
    good = _connack(_endpoint(broker, pki, tls=policy.Tls(pki.ca_path, server_name="localhost")))
    assert not good["rc"].is_failure
    with pytest.raises(ssl.SSLCertVerificationError):
        _connack(_endpoint(broker, pki, tls=policy.Tls(pki.ca_path, server_name="elsewhere")))


def test_a_wrong_password_is_explained(broker, pki):
    got = _connack(_endpoint(broker, pki, password="wrong"))
    assert got["rc"].is_failure
    text = policy.explain(got["rc"], _endpoint(broker, pki))
    assert f"(0x{got['rc'].value:02X})" in text
    assert "check test.username and test.password / password_file" in text, text
    assert "client certificate" in policy.explain(got["rc"])


def test_reason_code_hints():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    taken = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    assert "another client connected with this account/client id" in policy.explain(taken)
    assert "keepalive" in policy.explain(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8D))
    assert "not accepting" in policy.explain(ReasonCode(PacketTypes.CONNACK, identifier=0x88))
    bad = ReasonCode(PacketTypes.CONNACK, identifier=0x86)
    assert "check username/password/password_file" in policy.explain(bad)
    # paho's own words for a connection that ended without a DISCONNECT are not the broker's
    from paho.mqtt.client import DisconnectFlags

    lost, said = DisconnectFlags(False), DisconnectFlags(True)
    unspecified = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)
    assert policy.explain_disconnect(lost, unspecified).startswith("connection lost")
    assert "without saying why" in policy.explain_disconnect(said, unspecified)
    quiet = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8D)
    assert "no answer from the broker" in policy.explain_disconnect(lost, quiet)
    assert "1.5 x keepalive" in policy.explain_disconnect(said, quiet)
    assert "shutting down" in policy.explain_disconnect(
        said, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8B)
    )


def test_an_untrusted_ca_is_explained(broker, pki, tmp_path):
    foreign = TestPKI(tmp_path / "foreign", "some other CA")
    endpoint = _endpoint(broker, pki, tls=policy.Tls(foreign.ca_path))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        _connack(endpoint)
    text = policy.explain_error(info.value, endpoint)
    assert "not trusted by test.tls.ca" in text and "check the CA file" in text, text


def test_a_refused_port_is_explained(broker, pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = _endpoint(broker, pki, port=port, tls=None)
    with pytest.raises(ConnectionRefusedError) as info:
        _connack(endpoint)
    assert "cannot reach broker 127.0.0.1:" in policy.explain_error(info.value, endpoint)


def test_a_missing_password_file_is_a_connect_error_not_a_crash(broker, pki, tmp_path):
    secret = tmp_path / "pw"
    endpoint = _endpoint(broker, pki, password=None, password_file=secret)
    with pytest.raises(policy.ConnectError) as info:
        policy.new_client(endpoint)
    assert str(info.value).startswith("test.password_file: cannot read it"), info.value
    named = _endpoint(broker, pki, password=None, password_file=secret,
                      names={"password_file": "--password-file"})  # fmt: skip
    with pytest.raises(policy.ConnectError, match="^--password-file: cannot read it"):
        policy.new_client(named)


def test_a_connection_reads_the_password_file_on_every_attempt(broker, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wardgate")
    secret = tmp_path / "pw"
    endpoint = _endpoint(broker, pki, password=None, password_file=secret)
    conn = policy.Connection(endpoint, name="policy-test").start()
    try:
        time.sleep(0.5)
        assert not conn.connected.is_set()
        assert conn.last_error.startswith("policy-test: test.password_file: cannot read it")
        assert len(conn.delays) >= 2  # it kept trying, within the backoff
        secret.write_text(WATCHER_PASSWORD + "\n")  # put back: the next attempt reads it
        assert conn.wait_connected(5)
        assert conn.last_error == ""
    finally:
        conn.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot read it" in m for m in messages) == 1, messages  # said once, not spammed


def test_a_connection_reconnects_after_a_broker_restart(broker, pki):
    subscribed = threading.Event()
    conn = policy.Connection(
        _endpoint(broker, pki, clean_start=False, session_expiry_s=60),
        on_connect=lambda c, *a: subscribed.set(),
    ).start()
    try:
        assert conn.wait_connected(5) and subscribed.wait(5)
        subscribed.clear()
        broker.stop()
        time.sleep(0.5)
        assert not conn.connected.is_set()
        broker.start()
        assert subscribed.wait(10), conn.last_error
        assert max(conn.delays) <= 0.2  # the endpoint's cap
    finally:
        conn.stop()


def test_backoff_is_full_jitter_capped_exponential():
    b = Backoff(0.5, 4.0)
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        b.next()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.ceiling() == 0.5
    samples = [Backoff(0.5, 4.0) for _ in range(2000)]
    firsts = [s.next() for s in samples]
    assert all(0.0 <= d <= 0.5 for d in firsts)
    for s in samples:
        for _ in range(5):
            assert 0.0 <= s.next() <= 4.0
    capped = [s.next() for s in samples]  # ceiling 4 s (the cap) for all of them
    assert all(0.0 <= d <= 4.0 for d in capped)
    # full jitter: spread over the whole range, not bunched at the ceiling
    assert min(capped) < 0.4 and max(capped) > 3.6
    assert 1.7 < sum(capped) / len(capped) < 2.3  # the mean of U(0, 4) is 2


def test_backoff_floor_and_exact_jitter(monkeypatch):
    monkeypatch.setattr(retry, "full_jitter", lambda value: value)
    b = Backoff(1.0, 60.0, floor_s=0.1)
    assert [round(b.next(), 3) for _ in range(8)] == [1.1, 2.1, 4.1, 8.1, 16.1, 32.1, 60.1, 60.1]
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
