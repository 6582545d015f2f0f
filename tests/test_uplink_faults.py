"""The uplink under network faults: a real Mosquitto behind tests/faultproxy.py, a real paho client.

Each test drives one way an accepted alarm used to vanish or stall (issue 8, defects 1, 2, 14)
or one fault a field link shows (freeze, drop, reset mid-PUBLISH, half-open, delay), and checks
the only things that matter: every alarm reaches a real subscriber, an outbox row leaves only on
its own PUBACK, and the client never has more PUBLISHes in flight than the broker allows.
"""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest

from edge import config
from edge.uplink.mqtt import Uplink
from edge.uplink.outbox import Outbox
from protocol.events import Event, Kind
from tests.conftest import GATEWAY_PASSWORD, GATEWAY_USER, TEST_ACL, WATCHER_PASSWORD, WATCHER_USER
from tests.faultproxy import FaultProxy
from tests.harness import Watcher, gateway_config_text, write_config
from tests.mqtt_broker import MosquittoBroker


@pytest.fixture
def proxy(broker):
    p = FaultProxy(broker.host, broker.port).start()
    yield p
    p.stop()


@pytest.fixture
def alarms_watcher(broker):
    """Subscribes to events only: the wrap test's 65k snapshots would only slow it down."""
    w = Watcher(broker, topic="wg/v1/+/+/+/evt/#", client_id="fault-watcher")
    yield w
    w.stop()


class Link:
    """A bare Uplink + Outbox through the proxy (no Gateway: the tests hold the outbox's lock)."""

    def __init__(self, tmp_path, proxy: FaultProxy, keepalive_s: int = 5, uplink_extra: str = ""):
        via = SimpleNamespace(host=proxy.host, port=proxy.port, tls_port=None)
        text = gateway_config_text(
            via, tmp_path, keepalive_s=keepalive_s, uplink_extra=uplink_extra
        )
        cfg = config.load(write_config(tmp_path, text))
        self.outbox = Outbox(tmp_path / "outbox.sqlite3", fsync="normal")
        self.uplink = Uplink(cfg.uplink, cfg.topics, self.outbox, client_id=cfg.gateway.id)
        self.topics = cfg.topics
        self.gateway = cfg.gateway.id

    def __enter__(self) -> Link:
        self.uplink.start()
        _wait(lambda: self.uplink.connected, 10, "the first connection")
        return self

    def __exit__(self, *exc: object) -> None:
        self.uplink.stop(flush_timeout=0)
        self.outbox.close()

    def alarm(self, i: int) -> Event:
        event = Event(Kind.ALARM, f"n{i:03d}/smoke", {"i": i}, gateway=self.gateway)
        return self.uplink.submit(event)

    def critical_rows(self) -> int:
        return self.outbox.depth()["critical"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _arrived(watcher: Watcher, events: list[Event]) -> set[bytes]:
    want = {e.id for e in events}
    return want & {e.id for e in watcher.events("alarm")}


def _assert_at_least_once(watcher: Watcher, events: list[Event]) -> None:
    """Every alarm arrived; a second copy is only ever the same event (its id and seq)."""
    sent = {e.id: e for e in events}
    got = [e for e in watcher.events("alarm") if e.id in sent]
    missing = len(sent) - len({e.id for e in got})
    assert missing == 0, f"{missing} of {len(sent)} alarms lost"
    for e in got:
        assert e == sent[e.id], "a redelivered alarm is not the event that was accepted"


def _birth_acked(stats) -> bool:
    return stats["puback_b2c"] >= 1


# --- defect 1: a message-id wrap --------------------------------------------------------------
def test_message_id_wrap_never_settles_an_alarm_without_its_puback(
    tmp_path, broker, proxy, alarms_watcher
):
    """65,600 volatile publishes (QoS 0 snapshots, QoS 1 command replies) wrap paho's 16-bit
    message id. The old uplink kept every volatile id it had seen in `_early` as "PUBACK came
    before publish() returned", so an alarm that reused one counted as acknowledged the moment it
    was written: with the link frozen (no PUBACK can come) the outbox was already empty, and after
    a reset the alarms never arrived (seen: 0 of 5 rows kept, 0 of 5 delivered)."""
    with Link(tmp_path, proxy) as link:
        proxy.wait_for(_birth_acked, what="the birth message's PUBACK")
        rows = [
            link.uplink.submit(Event(Kind.READING, "t/1", {"i": i}, gateway=link.gateway))
            for i in range(20)
        ]
        assert link.uplink.wait_drained(10) and rows
        before = proxy.stats()["publish_c2b"]
        snap, res = link.topics.snap("cam1"), link.topics.cmd_res
        volatile = 65_600
        for i in range(volatile):
            if i % 200 == 0:
                ok = link.uplink.publish_volatile(res, b'{"ok":true}', qos=1)
            else:
                ok = link.uplink.publish_volatile(snap, b"\xff\xd8", qos=0)
            assert ok, f"volatile publish {i} refused: {link.uplink.status()}"
        stats = proxy.wait_for(
            lambda s: s["publish_c2b"] >= before + volatile, 30, "every volatile publish written"
        )
        proxy.freeze()
        alarms = [link.alarm(i) for i in range(5)]
        qos1 = stats["publish_qos1_c2b"]
        proxy.wait_for(lambda s: s["publish_qos1_c2b"] >= qos1 + 5, 5, "the alarms on the wire")
        time.sleep(0.3)  # time for a (wrong) settlement to delete them
        kept_while_frozen = link.critical_rows()
        proxy.reset()  # the held PUBLISHes die with the link; only the outbox still has them
        proxy.thaw()
        try:
            alarms_watcher.wait_for(
                lambda: len(_arrived(alarms_watcher, alarms)) == 5, 10, "the 5 alarms"
            )
        except AssertionError:
            pass
        delivered = len(_arrived(alarms_watcher, alarms))
        assert (kept_while_frozen, delivered) == (5, 5), (
            f"{kept_while_frozen} of 5 alarm rows kept without a PUBACK, {delivered} of 5 delivered"
        )
        assert link.uplink.wait_drained(5)


# --- defect 2: reconnect while the sender waits for the outbox ---------------------------------
def _thread_in(name: str, function: str) -> bool:
    thread = next((t for t in threading.enumerate() if t.name == name), None)
    frame = sys._current_frames().get(thread.ident) if thread else None
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_reconnect_while_the_sender_waits_on_the_outbox_sends_everything_on_the_new_link(
    tmp_path, broker, proxy, alarms_watcher
):
    """The sender reads its cursor and blocks on the outbox lock; the link resets and comes back;
    the sender resumes. The old uplink then wrote the old link's cursor into the new link's
    state and published on the dead client: 6 of 10 alarms waited for the next reconnect (seen:
    4 of 10 delivered within 5 s on a healthy link)."""
    with Link(tmp_path, proxy) as link:
        proxy.wait_for(_birth_acked, what="the birth message's PUBACK")
        proxy.freeze()
        first = [link.alarm(i) for i in range(5)]
        proxy.wait_for(lambda s: s["publish_qos1_c2b"] >= 6, 5, "5 alarms in flight")
        lock = link.outbox._lock
        lock.acquire()
        try:
            link.uplink.kick()
            _wait(lambda: _thread_in("uplink-pub", "pending"), 5, "the sender on the outbox lock")
            topic = link.topics.event(Kind.ALARM)
            second = [
                link.outbox.put(Event(Kind.ALARM, f"late/{i}", {}, gateway=link.gateway), topic)
                for i in range(5)
            ]
            proxy.reset()
            proxy.thaw()
            _wait(lambda: link.uplink.status()["connections"] == 2, 10, "the reconnect")
            _wait(lambda: link.uplink.connected, 5, "the new link up")
        finally:
            lock.release()
        alarms = first + second
        try:
            alarms_watcher.wait_for(
                lambda: len(_arrived(alarms_watcher, alarms)) == 10, 5, "all 10 alarms"
            )
        except AssertionError:
            pass
        delivered = len(_arrived(alarms_watcher, alarms))
        assert delivered == 10, f"{delivered} of 10 alarms delivered on the new link within 5 s"
        assert link.uplink.status()["connections"] == 2  # no second reconnect was needed
        _assert_at_least_once(alarms_watcher, alarms)


# --- defect 14: the broker's Receive Maximum ---------------------------------------------------
def test_receive_maximum_of_the_broker_bounds_the_publishes_in_flight(tmp_path):
    """Mosquitto with `max_inflight_messages 5` announces Receive Maximum 5 in its CONNACK. The old
    uplink put its own window (64) on the wire regardless (seen: 30 unacknowledged PUBLISHes)."""
    users = {GATEWAY_USER: GATEWAY_PASSWORD, WATCHER_USER: WATCHER_PASSWORD}
    strict = MosquittoBroker(
        tmp_path / "broker", users=users, acl=TEST_ACL, extra_conf="max_inflight_messages 5\n"
    ).start()
    proxy = FaultProxy(strict.host, strict.port).start()
    watcher = Watcher(strict, topic="wg/v1/+/+/+/evt/#", client_id="rm-watcher")
    try:
        with Link(tmp_path, proxy) as link:
            stats = proxy.wait_for(_birth_acked, what="the birth message's PUBACK")
            assert stats["receive_maximum"] == 5, stats  # the broker did announce it
            proxy.freeze()
            alarms = [link.alarm(i) for i in range(30)]
            time.sleep(1.0)
            frozen = proxy.stats()
            assert frozen["max_inflight"] <= 5, f"{frozen['max_inflight']} PUBLISHes in flight"
            assert frozen["publish_qos1_c2b"] == 1 + 5, frozen  # birth + a full window
            proxy.thaw()
            watcher.wait_for(lambda: len(_arrived(watcher, alarms)) == 30, 10, "30 alarms")
            # a drain through the open link keeps to the window too (command replies included)
            alarms += [link.alarm(i) for i in range(30, 230)]
            for _ in range(20):
                link.uplink.publish_volatile(link.topics.cmd_res, b"{}", qos=1)
            watcher.wait_for(lambda: len(_arrived(watcher, alarms)) == 230, 10, "230 alarms")
            assert proxy.stats()["max_inflight"] <= 5, proxy.stats()
            _assert_at_least_once(watcher, alarms)
    finally:
        watcher.stop()
        proxy.stop()
        strict.stop()


# --- link faults with a burst of alarms --------------------------------------------------------
FAULTS = ["freeze", "drop", "reset_mid_publish", "half_open", "delay"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_burst_of_alarms_survives_a_link_fault(tmp_path, broker, proxy, alarms_watcher, fault):
    """40 alarms, 10 ms apart; the fault hits after the 10th. None lost, repeats only as the
    same event (at-least-once); the outbox is empty afterwards."""
    with Link(tmp_path, proxy, keepalive_s=2) as link:
        proxy.wait_for(_birth_acked, what="the birth message's PUBACK")
        alarms: list[Event] = []
        for i in range(40):
            if i == 10:
                if fault == "freeze":
                    proxy.freeze()
                    threading.Timer(1.5, proxy.thaw).start()
                elif fault == "reset_mid_publish":
                    proxy.reset_mid_publish(5)
                elif fault == "delay":
                    proxy.delay(0.2)
                else:
                    getattr(proxy, fault)()
            alarms.append(link.alarm(i))
            time.sleep(0.01)
        if fault == "delay":
            alarms_watcher.wait_for(lambda: len(_arrived(alarms_watcher, alarms)) >= 20, 5)
            proxy.delay(0)
        alarms_watcher.wait_for(
            lambda: len(_arrived(alarms_watcher, alarms)) == 40, 15, "all 40 alarms"
        )
        _assert_at_least_once(alarms_watcher, alarms)
        assert link.uplink.wait_drained(5), link.outbox.depth()
        stats = proxy.stats()
        if fault in ("drop", "reset_mid_publish", "half_open"):
            assert link.uplink.status()["connections"] >= 2
        if fault == "reset_mid_publish":
            assert stats["cuts"] == 1
