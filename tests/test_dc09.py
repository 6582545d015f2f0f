"""SIA DC-09 hand-over (central/dc09.py) against a real DC-09 receiver: pysiaalarm, the one Home
Assistant's SIA integration runs, listening on a free local port."""

from __future__ import annotations

import queue
import re
import socket
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAClient
from pysiaalarm.event import SIAEvent

from central.dc09 import (
    Dc09Error,
    Dc09Forwarder,
    _encrypt,
    build_message,
    crc16,
    frame,
    parse_key,
    parse_reply,
    read_key_file,
    sia_data,
)

# pysiaalarm takes the key as text and uses its characters as the AES key bytes; the forwarder
# takes the key bytes as hex (docs/dc09.md, "Keys")
DESK_KEY = "0123456789ABCDEF"
KEY_HEX = DESK_KEY.encode().hex()
OTHER_KEY = "FEDCBA9876543210"
ENC_ACCOUNT, PLAIN_ACCOUNT = "AAA1", "BBB2"
FAST = dict(ack_timeout_s=1.0, backoff_initial_s=0.02, backoff_cap_s=0.1, connect_timeout_s=1.0)


class Desk:
    """A pysiaalarm receiver in this process; `events` gets every event it accepted (ACKed)."""

    def __init__(self, accounts, port=0, udp=False):
        self.events: queue.Queue[SIAEvent] = queue.Queue()
        proto = CommunicationsProtocol.UDP if udp else CommunicationsProtocol.TCP
        self.client = SIAClient("127.0.0.1", port, accounts, self.events.put, proto)
        self.port = self.client.sia_server.server_address[1]
        self.client.start()

    def next(self, timeout=5.0) -> SIAEvent:
        return self.events.get(timeout=timeout)

    def stop(self):
        if self.client is not None:
            self.client.stop()
            self.client = None


@pytest.fixture
def desk():
    d = Desk([SIAAccount(ENC_ACCOUNT, DESK_KEY), SIAAccount(PLAIN_ACCOUNT)])
    yield d
    d.stop()


@pytest.fixture
def forwarders():
    started = []

    def make(*args, **kwargs):
        f = Dc09Forwarder(*args, **{**FAST, **kwargs})
        f.start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- frames -------------------------------------------------------------------------------------


def test_crc_and_frame_match_the_dc09_example():
    assert crc16(b"123456789") == 0xBB3D  # CRC-16/ARC's catalogue check value
    # the example message of ANSI/SIA DC-09 (also in pysiaalarm's test cases)
    body = '"SIA-DCS"9876R579BDFL789ABC#12345A[#12345A|NFA129]'
    assert frame(body) == b'\nCE110032"SIA-DCS"9876R579BDFL789ABC#12345A[#12345A|NFA129]\r'
    for text in ("", "a", '"ACK"0001L0#AAA[]', "x" * 300):  # same CRC as the receiver's
        assert f"{crc16(text.encode()):04X}" == SIAEvent._crc_calc(text)


def test_plain_frame_layout():
    when_ms = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
    data = sia_data("AAA1", "FA", "12", when_ms)
    raw = build_message(
        seq=42,
        account="AAA1",
        data=data,
        sent_s=when_ms / 1000 + 5,
        receiver="5",
        line="2",
        xdata=("Ismoke",),
    )
    body = '"SIA-DCS"0042R5L2#AAA1[#AAA1|Nti22:13/FA12][Ismoke]_22:13:25,11-14-2023'
    assert raw == b"\n%04X0%03X%s\r" % (crc16(body.encode()), len(body), body.encode())


def test_encrypted_frame_layout_and_padding():
    key = bytes.fromhex(KEY_HEX)
    pads = []
    for n in range(40):  # every length modulo 16, so also the rest that needs 16 pad bytes
        raw = build_message(
            seq=n + 1,
            account="AAA1",
            data=sia_data("AAA1", "FT", "1" * (n % 7)),
            sent_s=1_700_000_000,
            key=key,
            xdata=("I" + "t" * n,) if n else (),
        )
        m = re.fullmatch(
            rb'\n([0-9A-F]{4})0([0-9A-F]{3})("\*SIA-DCS"%04dL0#AAA1\[([0-9A-F]+))\r' % (n + 1), raw
        )
        assert m, raw
        assert int(m[1], 16) == crc16(m[3]) and int(m[2], 16) == len(m[3])
        dec = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
        plain = dec.update(bytes.fromhex(m[4].decode())) + dec.finalize()
        assert len(plain) % 16 == 0
        pad, bar, rest = plain.partition(b"|")
        assert bar and 1 <= len(pad) <= 16 and not set(pad) & set(b"|[]")
        assert rest.endswith(b"_22:13:20,11-14-2023") and rest.startswith(b"#AAA1|NFT")
        if (len(rest) + 1) % 16 == 0:
            assert len(pad) == 16  # DC-09 § 5.4.4.3: never an empty pad
        pads.append(pad)
    # random, different every message (a pad of 1-3 characters may repeat by chance: once in
    # about 25 runs two 1-character pads were equal)
    long_pads = [p for p in pads if len(p) >= 4]
    assert len(long_pads) >= 20 and len(set(long_pads)) == len(long_pads)


def test_replies_are_checked():
    ok = frame('"ACK"0007L0#AAA1[]')
    assert parse_reply(ok, None).seq == 7
    with pytest.raises(Dc09Error, match="CRC"):
        parse_reply(b"\n0000" + ok[5:], None)
    with pytest.raises(Dc09Error, match="length"):
        parse_reply(ok[:5] + b"0099" + ok[9:], None)
    with pytest.raises(Dc09Error, match="no key"):
        parse_reply(frame('"*ACK"0007L0#AAA1[00'), None)
    nak = parse_reply(frame('"NAK"0000R0L0A0[]_10:00:00,01-02-2030'), None)
    assert nak.token == "NAK" and nak.timestamp.isoformat() == "2030-01-02T10:00:00+00:00"


def test_bad_settings_are_named():
    with pytest.raises(Dc09Error, match="32, 48 or 64 hex digits"):
        parse_key("0123456789ABCDEF")  # pysiaalarm's text form is not the hex form
    with pytest.raises(Dc09Error, match="account 'XYZ'"):
        Dc09Forwarder("localhost", 1, "XYZ")
    with pytest.raises(Dc09Error, match="code for 'fault': 'ft' is not two capital letters"):
        Dc09Forwarder("localhost", 1, "ABC", codes={"fault": "ft"})
    f = Dc09Forwarder("localhost", 1, "ABC")
    with pytest.raises(Dc09Error, match="unknown kind 'smoke'"):
        f.submit("smoke", None, 1, None, "e1")


def test_key_file(tmp_path, caplog):
    good, bad = tmp_path / "dc09.key", tmp_path / "bad.key"
    good.write_text(KEY_HEX.lower() + "\n")
    good.chmod(0o600)
    assert read_key_file(good) == KEY_HEX.upper() and "readable by others" not in caplog.text
    bad.write_text(DESK_KEY)
    bad.chmod(0o644)
    with pytest.raises(Dc09Error, match=f"{bad}: need 32, 48 or 64 hex digits"):
        read_key_file(bad)
    assert "readable by others" in caplog.text
    with pytest.raises(Dc09Error, match="cannot read"):
        read_key_file(tmp_path / "missing.key")


def test_a_full_queue_refuses_loudly(caplog):
    f = Dc09Forwarder("localhost", 1, "ABC", max_queue=2)  # not started: nothing drains
    assert f.submit("alarm", "smoke", 1, None, "e1") and f.submit("fault", "x", 2, None, "e2")
    assert not f.submit("alarm", "smoke", 3, None, "e3")
    assert f.status()["n_refused"] == 1 and f.pending() == ["e1", "e2"]
    assert "queue full" in caplog.text and "e3" in caplog.text


# --- against pysiaalarm -------------------------------------------------------------------------


def test_alarm_fault_restore_and_test_reach_the_desk(desk, forwarders):
    results = []
    enc = forwarders(
        "127.0.0.1",
        desk.port,
        ENC_ACCOUNT,
        KEY_HEX,
        receiver="5",
        line="2",
        on_result=lambda i, o: results.append((i, o)),
    )
    plain = forwarders("127.0.0.1", desk.port, PLAIN_ACCOUNT)
    now_ms = int(time.time() * 1000)
    enc.submit("alarm", "smoke", 12, now_ms, "e-alarm", text="d03/w112/fp007 n07/smoke")
    enc.submit("fault", "node_silent", "d03/w112/fp007 n07", now_ms, "e-fault")
    enc.submit("alarm_restore", None, "12", now_ms, "e-restore")
    plain.submit("alarm", "test", 3, now_ms, "e-test")

    got = [desk.next() for _ in range(4)]
    by_code = {e.code: e for e in got}
    assert sorted(by_code) == ["FA", "FH", "FT", "RX"]
    fa, ft, fh, rx = by_code["FA"], by_code["FT"], by_code["FH"], by_code["RX"]
    for e in (fa, ft, fh):
        assert (e.account, e.encrypted, e.receiver, e.line) == (ENC_ACCOUNT, True, "R5", "L2")
    assert (rx.account, rx.encrypted, rx.message) == (PLAIN_ACCOUNT, False, "3")
    assert fa.message == "12" and fh.message == "12" and ft.message is None
    assert fa.ti == time.strftime("%H:%M", time.gmtime(now_ms / 1000))
    assert [x.value for x in fa.extended_data] == ["smoke d03/w112/fp007 n07/smoke"]
    assert [x.value for x in ft.extended_data] == ["node_silent d03/w112/fp007 n07"]
    assert [e.code for e in got if e.account == ENC_ACCOUNT] == ["FA", "FT", "FH"]  # in order

    wait_for(lambda: enc.status()["n_acked"] == 3 and plain.status()["n_acked"] == 1)
    s = enc.status()
    assert (s["n_sent"], s["n_retried"], s["queued"], s["state"]) == (3, 0, 0, "idle")
    assert results == [("e-alarm", "acked"), ("e-fault", "acked"), ("e-restore", "acked")]


def test_wrong_key_is_refused_retried_and_kept(forwarders):
    desk = Desk([SIAAccount(ENC_ACCOUNT, OTHER_KEY)])
    try:
        results = []
        f = forwarders(
            "127.0.0.1",
            desk.port,
            ENC_ACCOUNT,
            KEY_HEX,
            fail_after=2,
            on_result=lambda i, o: results.append((i, o)),
        )
        f.submit("alarm", "smoke", 7, None, "e1")
        wait_for(lambda: f.status()["n_failed"] == 1, what="failure report")
        s = f.status()
        assert s["n_naks"] >= 2 and s["n_acked"] == 0 and f.pending() == ["e1"]  # kept
        assert "NAK" in s["last_error"] and results == [("e1", "failed")]
        assert desk.events.empty()
        desk.client.accounts = [SIAAccount(ENC_ACCOUNT, DESK_KEY)]  # the desk fixes its key
        assert desk.next().code == "FA"
        wait_for(lambda: f.pending() == [], what="delivery")
        assert results[-1] == ("e1", "acked") and f.status()["n_acked"] == 1
    finally:
        desk.stop()


def test_receiver_down_then_up(forwarders):
    port = free_port()
    f = forwarders("127.0.0.1", port, PLAIN_ACCOUNT)
    f.submit("alarm", "heat", 4, None, "e1")
    wait_for(lambda: f.status()["n_connect_errors"] >= 2, what="refused connections")
    assert f.pending() == ["e1"] and f.status()["state"] in ("retrying", "connecting")
    desk = Desk([SIAAccount(PLAIN_ACCOUNT)], port=port)
    try:
        e = desk.next()
        assert (e.code, e.message) == ("FA", "4")
        wait_for(lambda: f.status()["n_acked"] == 1)
    finally:
        desk.stop()


def test_a_dropped_connection_is_reopened(desk, forwarders):
    f = forwarders("127.0.0.1", desk.port, PLAIN_ACCOUNT)
    f.submit("fault", None, 1, None, "e1")
    assert desk.next().code == "FT"
    wait_for(lambda: f.status()["n_acked"] == 1)
    f._link.sock.shutdown(socket.SHUT_RDWR)  # as if the desk had hung up on an idle link
    f.submit("fault_restore", None, 1, None, "e2")
    assert desk.next().code == "FJ"
    wait_for(lambda: f.status()["n_acked"] == 2)
    assert f.status()["n_retried"] == 0  # reopened at once, not after a backoff


def test_only_the_matching_authentic_ack_counts(forwarders):
    """Replies pysiaalarm never sends, from a scripted peer: each is ignored until the real one."""
    key = bytes.fromhex(KEY_HEX)
    server = socket.create_server(("127.0.0.1", 0))
    f = forwarders("127.0.0.1", server.getsockname()[1], "ABC", KEY_HEX)
    f.submit("alarm", "smoke", 1, None, "e1")
    conn, _ = server.accept()
    with server, conn:
        request = conn.recv(4096)
        seq = re.search(rb'"\*SIA-DCS"(\d{4})', request)[1].decode()
        stamp = time.strftime("_%H:%M:%S,%m-%d-%Y", time.gmtime())
        good = frame(f'"*ACK"{seq}L0#ABC[' + _encrypt(key, "]" + stamp))
        for reply in (
            frame(f'"*ACK"{int(seq) + 1:04d}L0#ABC[' + _encrypt(key, "]" + stamp)),  # stale
            frame(f'"*ACK"{seq}L0#ABD[' + _encrypt(key, "]" + stamp)),  # another account
            frame(f'"ACK"{seq}L0#ABC[]'),  # unencrypted: anyone could have sent it
            frame(f'"*ACK"{seq}L0#ABC[' + _encrypt(bytes(16), "]" + stamp)),  # not our key
            b"\n0000" + good[5:],  # bad CRC
        ):
            conn.sendall(reply)
            time.sleep(0.05)
            assert f.status()["n_acked"] == 0, reply
        conn.sendall(good)
        wait_for(lambda: f.status()["n_acked"] == 1)
    s = f.status()
    assert (s["n_bad_replies"], s["n_retried"], s["n_sent"]) == (5, 0, 1)


def test_clock_skew_nak_is_logged_and_corrected(desk, forwarders, caplog):
    f = forwarders("127.0.0.1", desk.port, PLAIN_ACCOUNT, clock=lambda: time.time() + 3600)
    f.submit("alarm", "smoke", 9, None, "e1")
    e = desk.next()
    assert e.code == "FA" and abs(e.timestamp.timestamp() - time.time()) < 5
    wait_for(lambda: f.status()["n_acked"] == 1)
    s = f.status()
    assert s["n_clock_skew"] == 1 and s["n_naks"] == 1 and abs(s["clock_offset_s"] + 3600) < 5
    assert re.search(r"clock skew of -36(00|01) s", caplog.text)  # the NAK's time is in seconds


def test_a_message_the_desk_cannot_process_is_set_aside(desk, forwarders):
    results = []
    f = forwarders(
        "127.0.0.1",
        desk.port,
        PLAIN_ACCOUNT,
        codes={"fault": "ZX"},
        on_result=lambda i, o: results.append((i, o)),
    )
    f.submit("fault", None, 1, None, "e-unknown")
    f.submit("alarm", "smoke", 2, None, "e-alarm")
    assert desk.next().code == "FA"  # not held back behind the one the desk refuses
    wait_for(lambda: f.status()["n_acked"] == 1)
    assert f.rejected() == ["e-unknown"] and f.status()["n_duhs"] == 3
    assert results == [("e-unknown", "rejected"), ("e-alarm", "acked")]


def test_udp_and_link_test(forwarders):
    desk = Desk([SIAAccount(ENC_ACCOUNT, DESK_KEY)], udp=True)
    try:
        f = forwarders("127.0.0.1", desk.port, ENC_ACCOUNT, KEY_HEX, udp=True, link_test_s=0.2)
        f.submit("comm_trouble", None, "d03/w112/fp007 silent", None, "e1")
        got = sorted((desk.next(), desk.next()), key=lambda e: e.message_type.value)
        null, ys = got  # idle, the NULL link test goes out too (pysiaalarm reports it as RP)
        assert (null.message_type.value, null.code, null.encrypted) == ("NULL", "RP", True)
        assert (ys.message_type.value, ys.code, ys.encrypted) == ("SIA-DCS", "YS", True)
        wait_for(lambda: f.status()["n_acked"] == 1 and f.status()["n_link_tests"] >= 1)
        desk.stop()  # a silent desk: the next link test gets no answer
        wait_for(lambda: f.status()["state"] == "link_down", what="link_down")
    finally:
        desk.stop()


def test_stop_is_prompt_while_waiting_for_an_answer():
    silent = socket.socket()  # accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        f = Dc09Forwarder("127.0.0.1", silent.getsockname()[1], "ABC", ack_timeout_s=30)
        f.start()
        f.submit("alarm", "smoke", 1, None, "e1")
        wait_for(lambda: f.status()["state"] == "waiting_ack")
        t0 = time.monotonic()
        f.stop()
        assert time.monotonic() - t0 < 1.0 and not f._thread.is_alive()
        assert f.pending() == ["e1"] and f.status()["state"] == "stopped"
    finally:
        silent.close()


# --- the operations center hands over what it stores --------------------------------------------


def _service(broker, tmp_path, port):
    from central.config import load
    from central.service import CentralService
    from tests.central_support import central_config

    key = tmp_path / "dc09.key"
    key.write_text(KEY_HEX + "\n")
    key.chmod(0o600)
    extra = (
        f'\n[dc09]\nhost = "127.0.0.1"\nport = {port}\naccount = "{ENC_ACCOUNT}"\n'
        f'key_file = "{key}"\n'
    )
    svc = CentralService(load(central_config(broker, tmp_path, extra=extra)), config_dir=tmp_path)
    svc.start(console=False)
    wait_for(lambda: svc.live.broker.connected, 10, "ingest connected")
    return svc


def test_the_service_hands_alarms_and_faults_over_and_owes_them_across_a_restart(broker, tmp_path):
    from protocol.events import Event, Kind
    from tests.harness import Watcher

    port = free_port()
    gateway = Watcher(broker, client_id="dc09-gateway", topic="wg/v1/none/#")  # publishes only
    base = "wg/v1/d01/w01/gw-test-1"
    fire = Event(Kind.ALARM, "n07/smoke", {"cause": "smoke"})
    fault = Event(Kind.FAULT, "n07", {"active": True, "code": "silent"})
    svc = _service(broker, tmp_path, port)  # the desk is not up yet
    try:
        gateway.client.publish(f"{base}/evt/alarm", fire.to_cbor(), qos=1).wait_for_publish(5)
        wait_for(lambda: len(svc.store.handover_pending("dc09")) == 1, 10, "the alarm stored")
    finally:
        svc.stop()  # stopped before the desk ever answered: the hand-over is owed
    desk = Desk([SIAAccount(ENC_ACCOUNT, DESK_KEY)], port=port)
    svc = _service(broker, tmp_path, port)
    try:
        first = desk.next(10)  # sent again after the restart, from the store
        assert first.code == "FA" and "d01/w01/gw-test-1 n07/smoke" in first.extended_data[0].value
        gateway.client.publish(f"{base}/evt/fault", fault.to_cbor(), qos=1).wait_for_publish(5)
        second = desk.next(10)
        assert second.code == "FT" and "silent" in second.extended_data[0].value
        wait_for(lambda: svc.store.handover_pending("dc09") == [], 10, "both acknowledged")
        link = svc.live.snapshot()["dc09"]  # what every console screen shows (the ARC pill)
        assert link["n_acked"] == 2 and link["queued"] == 0 and link["encrypted"] is True
    finally:
        svc.stop()
        desk.stop()
        gateway.conn.stop()
