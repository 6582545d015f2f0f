"""MQTT v5 uplink: drains the outbox to the broker, lane by lane, and takes commands in.

One paho client per connection: after a disconnect, every unacknowledged row is sent again from
the outbox in lane order, so nothing depends on paho's in-memory queue (which a crash loses).
Each client runs paho's own network thread (loop_start): only then does paho queue writes from
other threads for that thread; otherwise publish() writes to the socket in the calling thread,
and concurrent writers corrupt a TLS stream (seen: "Protocol error" disconnects).
Each connection's state lives in one `_Link` with an epoch: callbacks and sender writes of an old
connection are dropped, only outbox rows enter the acknowledgement map, and the window honours the
broker's Receive Maximum (issue 8).
The client itself (TLS, credentials, TCP_NODELAY, CONNECT properties, reason-code hints) comes from
the one connection policy, protocol/mqtt.py; reconnects wait the one backoff (protocol/retry.py:
capped exponential, full jitter). The session is persistent (clean_start=False, a session
expiry), so commands sent while we were away wait.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.clock import mono_s
from edge.config import UplinkSection
from edge.uplink.outbox import (
    Outbox,
    OutboxError,
    Row,
    Statement,
    expired,
    remaining_expiry_s,
)
from protocol import mqtt as policy
from protocol.events import Event, Lane, now_ms
from protocol.retry import Backoff
from protocol.topics import GatewayTopics

log = logging.getLogger("wardgate.uplink")

MessageHandler = Callable[[str, bytes, Any], None]


class _Link:
    """Everything that belongs to one connection, replaced whole (never reset) on reconnect.

    paho hands each callback its link (the client's userdata); a callback whose link is no
    longer the current one is ignored, and the sender re-checks the link after every call that
    can block. So an old connection's cursor, in-flight map or late PUBACK cannot reach the new
    one: the fields below are per connection by construction, not by a reset racing a writer.
    """

    __slots__ = (
        "epoch",
        "client",
        "up",
        "down",
        "window",
        "inflight",
        "cursor",
        "spill_sent",
        "acks",
        "refused",
        "recheck",
    )

    def __init__(self, epoch: int, client: mqtt.Client, max_inflight: int) -> None:
        self.epoch = epoch
        self.client = client
        self.up = False  # between a successful CONNACK and the disconnect
        self.down = threading.Event()
        self.window = max_inflight  # min(uplink.max_inflight, the broker's Receive Maximum)
        # Owned by the sender thread alone. Only outbox rows ever enter `inflight` (QoS 0 and
        # volatile publishes never do), and a row leaves it only when its own MQTTMessageInfo is
        # published: paho sets that for the message it popped on that PUBACK, so a PUBACK or a
        # QoS 0 write that merely shares a message id (ids wrap at 65,535) cannot settle a row.
        self.inflight: dict[int, tuple[int, mqtt.MQTTMessageInfo]] = {}  # mid -> row id, info
        self.cursor: dict[Lane, int] = {lane: 0 for lane in Lane}
        self.spill_sent: set[int] = set()
        # Written by paho's thread, read by the sender: on_publish's message ids (hints that
        # something settled; deque appends need no lock) and the reason of each failed PUBACK.
        self.acks: deque[int] = deque()
        self.refused: dict[int, str] = {}
        self.recheck: list[int] = []  # hinted ids whose info paho had not yet marked published


class Uplink:
    def __init__(
        self,
        cfg: UplinkSection,
        topics: GatewayTopics,
        outbox: Outbox,
        client_id: str,
        state_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.outbox = outbox
        self.client_id = client_id
        self.state_extra = state_extra or (lambda: {})
        self.on_message: MessageHandler | None = None
        self._stop = threading.Event()
        # _wake guards _link replacement, link.up and _kicked; it is never held while calling
        # into paho (paho runs on_publish under its own message lock, which publish() takes)
        self._wake = threading.Condition()
        self._kicked = False
        self._link: _Link | None = None
        self._epoch = 0
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._connected_ok_once = False  # reset the backoff after a successful CONNACK
        self._last_error = ""
        self.stats = {"sent": 0, "acked": 0, "expired": 0, "rejected": 0, "volatile_dropped": 0}

    # --- public ----------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("uplink-net", self._connection_loop), ("uplink-pub", self._pump)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def threads_alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.up

    @property
    def last_error(self) -> str:
        return self._last_error

    def submit(self, event: Event, also: Sequence[Statement] = ()) -> Event:
        """Commit to the outbox and wake the sender. Durable once this returns."""
        expiry = self.cfg.event_expiry_s or None
        topic = self.topics.event(event.kind)
        committed = self.outbox.put(event, topic, self.cfg.format, expiry, also)
        self.kick()
        return committed

    def kick(self) -> None:
        with self._wake:
            self._kicked = True  # a kick while the sender is busy is not lost
            self._wake.notify()

    def publish_volatile(self, topic: str, payload: bytes, qos: int = 0, **props: Any) -> bool:
        """Publish now if connected (snapshots, command replies); never stored, never tracked:
        its PUBACK (or, for QoS 0, its write) cannot settle an outbox row."""
        link = self._link
        if link is None or not link.up:
            self.stats["volatile_dropped"] += 1
            return False
        properties = _properties(**props) if props else None
        info = link.client.publish(topic, payload, qos=qos, properties=properties)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def publish_state(self) -> bool:
        """Publish the retained online `state` again, now (a reload changed what it carries).
        Offline, nothing is sent: the next connection publishes the current one anyway."""
        link = self._link
        if link is None or not link.up:
            return False
        info = link.client.publish(self.topics.state, self._state_payload(True), qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty (and acknowledged), or the timeout passes."""
        deadline = mono_s() + timeout
        while mono_s() < deadline:
            if len(self.outbox) == 0:
                return True
            time.sleep(0.05)
        return len(self.outbox) == 0

    def stop(self, flush_timeout: float = 5.0) -> None:
        if self.connected and flush_timeout > 0:
            self.wait_drained(flush_timeout)
        link = self._link
        if link is not None and link.up:
            # a clean goodbye: mark offline ourselves (DISCONNECT suppresses the will)
            info = link.client.publish(
                self.topics.state, self._state_payload(False), qos=1, retain=True
            )
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()  # the connection thread now disconnects and stops paho's loop
        self.kick()
        for t in self._threads:
            t.join(5)

    def status(self) -> dict[str, Any]:
        link = self._link
        return {
            "connected": self.connected,
            "connections": self._connections,
            "inflight": len(link.inflight) if link is not None and link.up else 0,
            **({"last_error": self._last_error} if self._last_error else {}),
            **self.stats,
        }

    # --- connection ------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        # one client per connection, paho's reconnect off: the loop below owns reconnects;
        # the password file is read per connection (a missing secret is an uplink fault)
        client = policy.new_client(self.endpoint)
        client.max_inflight_messages_set(0)  # set from the CONNACK's Receive Maximum
        client.max_queued_messages_set(0)
        client.will_set(self.topics.state, self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @property
    def endpoint(self) -> policy.Endpoint:
        return endpoint_of(self.cfg, self.client_id)

    def _backoff_delays(self) -> Backoff:
        return self.endpoint.backoff()

    def _connection_loop(self) -> None:
        delays = self._backoff_delays()
        endpoint = self.endpoint
        while not self._stop.is_set():
            link: _Link | None = None
            try:
                client = self._new_client()
                with self._wake:
                    self._epoch += 1
                    link = _Link(self._epoch, client, self.cfg.max_inflight)
                    self._link = link
                client.user_data_set(link)
                policy.connect(client, endpoint)
                client.loop_start()
                try:
                    while not link.down.wait(0.5) and not self._stop.is_set():
                        pass
                finally:
                    if self._stop.is_set() and link.up:
                        client.disconnect()
                    client.loop_stop()
            except policy.ConnectError as exc:
                self._error(f"{exc}; alarms are kept in the outbox until it is fixed")
            except OSError as exc:  # TLS (ssl.SSLError) and the network
                self._error(policy.explain_error(exc, endpoint))
            except Exception as exc:  # never let the uplink thread die
                log.exception("uplink connection loop error")
                self._error(f"unexpected uplink error: {exc!r}")
            finally:
                if link is not None:
                    with self._wake:
                        link.up = False
            if self._stop.is_set():
                break
            if self._connected_ok_once:
                delays.reset()
                self._connected_ok_once = False
            delay = delays.next()
            log.info("reconnecting to %s:%s in %.1f s", self.cfg.host, self.cfg.port, delay)
            self._stop.wait(delay)

    def _error(self, message: str) -> None:
        if message != self._last_error:
            log.error("%s", message)
        else:
            log.debug("%s", message)
        self._last_error = message

    def _on_connect(self, client, link: _Link, flags, reason_code, properties) -> None:
        if link is not self._link:
            return  # a late callback of a previous connection
        if reason_code.is_failure:
            self._error(
                f"broker refused the connection: {policy.explain(reason_code, self.endpoint)}"
            )
            link.down.set()
            return
        # MQTT 5 3.2.2.3.3: no more unacknowledged QoS 1/2 PUBLISHes than the broker's Receive
        # Maximum (65,535 when absent). paho enforces it for every publish, volatile ones too
        # (queuing the excess); the sender keeps its rows within the same bound.
        receive_max = getattr(properties, "ReceiveMaximum", None) or 65535
        if receive_max < 65535:  # at 65,535 the message ids themselves are the bound
            _limit_inflight(client, receive_max)
        link.window = max(1, min(self.cfg.max_inflight, receive_max))
        self._connections += 1
        self._connected_ok_once = True
        self._last_error = ""
        log.info(
            "connected to %s:%s (session present: %s, receive maximum %d)",
            self.cfg.host,
            self.cfg.port,
            flags.session_present,
            receive_max,
        )
        client.subscribe(
            [(self.topics.cmd_filter, 1), (self.topics.ack, 1)],
        )
        client.publish(self.topics.state, self._state_payload(True), qos=1, retain=True)
        with self._wake:
            link.up = True
            self._kicked = True
            self._wake.notify()

    def _on_disconnect(self, client, link: _Link, flags, reason_code, properties) -> None:
        with self._wake:
            link.up = False
        link.down.set()
        if link is self._link and not self._stop.is_set():
            detail = policy.explain_disconnect(flags, reason_code, self.endpoint)
            log.warning("disconnected from broker: %s", detail)

    def _on_publish(self, client, link: _Link, mid, reason_code, properties) -> None:
        """A PUBACK (or, for QoS 0, a write) for message id `mid`: only a hint for the sender,
        which settles a row only if that row's own message is the one paho marked published."""
        if link is not self._link:
            return  # a late callback of a previous connection
        if reason_code.is_failure:
            link.refused[mid] = str(reason_code)  # before the hint: the sender reads it after
        link.acks.append(mid)
        with self._wake:
            self._wake.notify()

    def _on_message(self, client, userdata, msg) -> None:
        if self.on_message is not None:
            try:
                self.on_message(msg.topic, msg.payload, msg.properties)
            except Exception:
                log.exception("message handler failed for %s", msg.topic)

    def _state_payload(self, online: bool) -> bytes:
        state: dict[str, Any] = {
            "online": online,
            "time_ms": now_ms(),
            "gateway": self.topics.gateway,
        }
        # the will and a clean goodbye carry the extras too (version, site, labels): the
        # retained `state` of a gateway that is down still says where it is
        state.update(self.state_extra())
        return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()

    # --- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Delete acknowledged rows, then fill the in-flight window, most important lane first.

        Works on one link at a time; a link that went down (or was replaced) while the pump
        waited or blocked on the outbox is dropped, with whatever it was doing, and the next
        pass starts on the new link from its own fresh state."""
        while not self._stop.is_set():
            with self._wake:
                link = self._link
                live = link is not None and link.up
                if not self._kicked and not (live and link.acks):
                    # a hinted row whose info paho is about to mark published: look again soon
                    self._wake.wait(0.002 if live and link.recheck else 0.5)
                self._kicked = False
                link = self._link
                if link is None or not link.up:
                    continue
            try:
                acked = self._settle(link)
                self._fill_window(link)  # first: a new alarm must not wait behind a delete
                if acked:
                    self.outbox.delete(acked)  # acknowledged on the broker: valid on any link
                    self.stats["acked"] += len(acked)
                    self._fill_window(link)
            except Exception:
                log.exception("uplink pump error; retrying")
                self._stop.wait(0.5)

    def _settle(self, link: _Link) -> list[int]:
        """Turn on_publish hints into acknowledged row ids (sender thread only)."""
        acks, inflight = link.acks, link.inflight
        mids = link.recheck
        link.recheck = []
        while acks:
            mids.append(acks.popleft())
        acked: list[int] = []
        for mid in mids:
            entry = inflight.get(mid)
            if entry is None:
                link.refused.pop(mid, None)  # a volatile publish's: no row was sent with it
                continue
            row_id, info = entry
            if not info.is_published():
                # paho calls on_publish just before marking the message published; or this
                # hint was a volatile publish's that shares the id of a row still in flight
                link.recheck.append(mid)
                continue
            del inflight[mid]
            reason = link.refused.pop(mid, None)
            if reason is None:
                acked.append(row_id)
            else:  # the broker refused it (e.g. ACL): keep it, try again on the next connection
                self.stats["rejected"] += 1
                self._error(f"broker rejected a publish: {reason} (event kept in the outbox)")
        return acked

    def _fill_window(self, link: _Link) -> None:
        window = link.window - len(link.inflight)
        if window <= 0:
            return
        expired_ids: list[int] = []
        try:
            for lane in Lane:
                if window <= 0:
                    break
                rows = self.outbox.pending(lane, link.cursor[lane], window, link.spill_sent)
                if link is not self._link or not link.up:
                    return  # the link changed while we waited for the outbox: start over
                for row in rows:
                    if expired(row):
                        expired_ids.append(row.id)
                    elif not self._send(link, row):
                        return  # cursor not advanced: this row goes first next time
                    else:
                        window -= 1
                    if row.id > 0:
                        link.cursor[lane] = row.id
                    else:
                        link.spill_sent.add(row.id)
        finally:
            if expired_ids:
                self.stats["expired"] += self.outbox.delete(expired_ids, reason="expired")

    def _send(self, link: _Link, row: Row) -> bool:
        remaining = remaining_expiry_s(row) if row.lane != Lane.CRITICAL else None
        info = link.client.publish(
            row.topic,
            row.payload,
            qos=1,
            properties=_publish_properties(self.cfg.format, remaining),
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # no connection (this link is over), or paho still holds a volatile message under
            # the id it just drew: either way the row is sent again, with a fresh id
            return False
        link.inflight[info.mid] = (row.id, info)
        self.stats["sent"] += 1
        return True


def endpoint_of(cfg: UplinkSection, client_id: str) -> policy.Endpoint:
    """The uplink's endpoint on the connection policy: a persistent session (clean_start false,
    the config's session expiry) and the config's reconnect backoff."""
    tls = None
    if cfg.tls is not None:
        tls = policy.Tls(
            ca=cfg.tls.ca,
            cert=cfg.tls.cert if cfg.tls.key is not None else None,
            key=cfg.tls.key if cfg.tls.cert is not None else None,
            server_name=cfg.tls.server_name,  # documented in docs/config.md; was ignored
        )
    return policy.Endpoint(
        host=cfg.host,
        port=cfg.port,
        tls=tls,
        username=cfg.username,
        password=cfg.password,
        password_file=cfg.password_file,
        client_id=client_id,
        keepalive_s=cfg.keepalive_s,
        clean_start=False,
        session_expiry_s=cfg.session_expiry_s,
        backoff_initial_s=cfg.backoff_initial_s,
        backoff_max_s=cfg.backoff_max_s,
        setting="uplink",
    )


def _limit_inflight(client: mqtt.Client, receive_max: int) -> None:
    """Make paho hold back QoS 1/2 publishes beyond `receive_max` (it queues and sends them as
    PUBACKs free slots). paho's setter refuses once the socket is open, because changing the
    limit under messages already in flight is untested there; in on_connect of a fresh client
    nothing has been published yet (the sender and publish_volatile wait for `up`), so setting
    the same attribute the setter sets is exactly as if it had been set before connecting.
    Not done for 65,535: paho refuses a publish whose id is still in flight, so it can never
    exceed that, and with a limit set it rescans its in-flight messages on every PUBACK (~4 us
    for 64 of them: a few per cent of the drain)."""
    if hasattr(client, "_max_inflight_messages"):
        client._max_inflight_messages = receive_max
    else:  # a paho without that attribute: our rows still keep to the window
        log.warning("cannot apply the broker's Receive Maximum to volatile publishes")


@functools.lru_cache(maxsize=512)
def _publish_properties(fmt: str, expiry_s: int | None) -> Properties:
    """Shared, read-only PUBLISH properties: building one per message cost a sixth of the
    sender's time in a drain (paho only reads them when packing)."""
    props = {"ContentType": "application/json" if fmt == "json" else "application/cbor"}
    if expiry_s is not None:
        props["MessageExpiryInterval"] = expiry_s
    return _properties(PacketTypes.PUBLISH, **props)


def _properties(packet_type: int = PacketTypes.PUBLISH, **values: Any) -> Properties:
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


__all__ = ["Uplink", "OutboxError"]
