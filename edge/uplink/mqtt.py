"""MQTT v5 uplink: drains the outbox to the broker, lane by lane, and takes commands in.

One paho client per connection: after a disconnect, every unacknowledged row is sent again from
the outbox in lane order, so nothing depends on paho's in-memory queue (which a crash loses).
Each client runs paho's own network thread (loop_start): only then does paho queue writes from
other threads for that thread; otherwise publish() writes to the socket in the calling thread,
and concurrent writers corrupt a TLS stream (seen: "Protocol error" disconnects).
Reconnects use capped exponential backoff with full jitter (the `backoff` package). The session
is persistent (clean_start=False, a session expiry), so commands sent while we were away wait.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import backoff
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import UplinkSection, read_password
from edge.events import Event, Lane, now_ms
from edge.topics import GatewayTopics
from edge.uplink.outbox import (
    Outbox,
    OutboxError,
    Row,
    Statement,
    expired,
    remaining_expiry_s,
)

log = logging.getLogger("wardgate.uplink")

MessageHandler = Callable[[str, bytes, Any], None]


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
        self._password = read_password(cfg)
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._link_down = threading.Event()
        # guarded by _wake, which is never held while calling into paho (paho calls
        # on_publish with its own lock held: holding ours across publish() would deadlock)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._early: dict[int, bool] = {}  # PUBACKs that beat publish() returning: mid -> ok
        self._spill_sent: set[int] = set()
        self._acked: list[int] = []
        self._cursor: dict[Lane, int] = {}
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
        return self._connected.is_set()

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
            self._wake.notify()

    def publish_volatile(self, topic: str, payload: bytes, qos: int = 0, **props: Any) -> bool:
        """Publish now if connected (snapshots, command replies); never stored."""
        client = self._client
        if client is None or not self.connected:
            self.stats["volatile_dropped"] += 1
            return False
        properties = _properties(**props) if props else None
        info = client.publish(topic, payload, qos=qos, properties=properties)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty (and acknowledged), or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.outbox) == 0:
                return True
            time.sleep(0.05)
        return len(self.outbox) == 0

    def stop(self, flush_timeout: float = 5.0) -> None:
        if self.connected and flush_timeout > 0:
            self.wait_drained(flush_timeout)
        client = self._client
        if client is not None and self.connected:
            # a clean goodbye: mark offline ourselves (DISCONNECT suppresses the will)
            info = client.publish(self.topics.state, self._state_payload(False), qos=1, retain=True)
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()  # the connection thread now disconnects and stops paho's loop
        self.kick()
        for t in self._threads:
            t.join(5)

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connections": self._connections,
            "inflight": len(self._inflight),
            **({"last_error": self._last_error} if self._last_error else {}),
            **self.stats,
        }

    # --- connection ------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(0)  # the pump bounds the window itself
        client.max_queued_messages_set(0)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self._password)
        if self.cfg.tls is not None:
            try:
                client.tls_set_context(self._tls_context())
            except (OSError, ssl.SSLError) as exc:
                raise _SetupError(
                    f"uplink.tls: cannot load the CA, certificate or key ({exc}); "
                    "check the paths and their permissions"
                ) from None
        client.will_set(self.topics.state, self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.cfg.tls
        assert tls is not None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert is not None and tls.key is not None:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
        return ctx

    def _backoff_delays(self) -> Iterator[float]:
        delays = backoff.expo(
            base=2, factor=self.cfg.backoff_initial_s, max_value=self.cfg.backoff_max_s
        )
        next(delays)  # backoff's generators are primed with one next()
        return delays

    def _connection_loop(self) -> None:
        delays = self._backoff_delays()
        while not self._stop.is_set():
            try:
                client = self._new_client()
                self._client = client
                props = _properties(
                    PacketTypes.CONNECT, SessionExpiryInterval=self.cfg.session_expiry_s
                )
                self._link_down.clear()
                client.connect(
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
                client.loop_start()
                try:
                    while not self._link_down.wait(0.5) and not self._stop.is_set():
                        pass
                finally:
                    if self._stop.is_set() and self.connected:
                        client.disconnect()
                    client.loop_stop()
            except _SetupError as exc:
                self._error(str(exc))
            except ssl.SSLCertVerificationError as exc:
                self._error(
                    f"TLS: the broker's certificate is not trusted by uplink.tls.ca "
                    f"({exc.verify_message}); check the CA file and the broker name"
                )
            except ssl.SSLError as exc:
                self._error(f"TLS handshake with {self.cfg.host}:{self.cfg.port} failed: {exc}")
            except OSError as exc:
                self._error(f"cannot reach broker {self.cfg.host}:{self.cfg.port}: {exc}")
            except Exception as exc:  # never let the uplink thread die
                log.exception("uplink connection loop error")
                self._error(f"unexpected uplink error: {exc!r}")
            finally:
                self._connected.clear()
            if self._stop.is_set():
                break
            if self._connected_ok_once:
                delays = self._backoff_delays()
                self._connected_ok_once = False
            delay = backoff.full_jitter(next(delays))
            log.info("reconnecting to %s:%s in %.1f s", self.cfg.host, self.cfg.port, delay)
            self._stop.wait(delay)

    def _error(self, message: str) -> None:
        if message != self._last_error:
            log.error("%s", message)
        else:
            log.debug("%s", message)
        self._last_error = message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = ""
            if reason_code.value in (0x86, 0x87, 0x8C):
                hint = (
                    " (check uplink.username and uplink.password / password_file, "
                    "or the client certificate)"
                )
            self._error(f"broker refused the connection: {reason_code}{hint}")
            self._link_down.set()
            return
        self._connections += 1
        self._connected_ok_once = True
        self._last_error = ""
        log.info(
            "connected to %s:%s (session present: %s)",
            self.cfg.host,
            self.cfg.port,
            flags.session_present,
        )
        client.subscribe(
            [(self.topics.cmd_filter, 1), (self.topics.ack, 1)],
        )
        client.publish(self.topics.state, self._state_payload(True), qos=1, retain=True)
        with self._wake:
            self._inflight.clear()
            self._early.clear()
            self._spill_sent.clear()
            self._acked.clear()
            self._cursor = {lane: 0 for lane in Lane}
            self._connected.set()
            self._wake.notify()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._link_down.set()
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if client is not self._client:
            return  # a late callback of a previous connection
        with self._wake:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                self._early[mid] = not reason_code.is_failure
                return
            self._settle(row_id, not reason_code.is_failure, str(reason_code))

    def _settle(self, row_id: int, ok: bool, reason: str = "") -> None:
        """Record a PUBACK (caller holds _wake)."""
        if ok:
            self._acked.append(row_id)
            self._wake.notify()
            return
        # the broker refused it (e.g. ACL): keep it, try again on the next connection
        self.stats["rejected"] += 1
        self._error(f"broker rejected a publish: {reason} (event kept in the outbox)")

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
        if online:
            state.update(self.state_extra())
        return json.dumps(state, separators=(",", ":")).encode()

    # --- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Delete acknowledged rows, then fill the in-flight window, most important lane first."""
        while not self._stop.is_set():
            with self._wake:
                acked, self._acked = self._acked, []
                if not acked:
                    self._wake.wait(0.5)
                    acked, self._acked = self._acked, []
            try:
                if self.connected:
                    self._fill_window()  # first: a new alarm must not wait behind a delete
                if acked:
                    self.outbox.delete(acked)
                    self.stats["acked"] += len(acked)
                    if self.connected:
                        self._fill_window()
            except Exception:
                log.exception("uplink pump error; retrying")
                self._stop.wait(0.5)

    def _fill_window(self) -> None:
        client = self._client
        window = self.cfg.max_inflight - len(self._inflight)
        if client is None or window <= 0:
            return
        expired_ids: list[int] = []
        for lane in Lane:
            if window <= 0:
                break
            rows = self.outbox.pending(lane, self._cursor.get(lane, 0), window, self._spill_sent)
            for row in rows:
                if row.id > 0:
                    self._cursor[lane] = row.id
                else:
                    self._spill_sent.add(row.id)
                if expired(row):
                    expired_ids.append(row.id)
                    continue
                if not self._send(client, row):
                    return
                window -= 1
        if expired_ids:
            self.stats["expired"] += self.outbox.delete(expired_ids, reason="expired")

    def _send(self, client: mqtt.Client, row: Row) -> bool:
        remaining = remaining_expiry_s(row) if row.lane != Lane.CRITICAL else None
        if not self.connected:
            return False
        info = client.publish(
            row.topic,
            row.payload,
            qos=1,
            properties=_publish_properties(self.cfg.format, remaining),
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False  # the connection just dropped: sent again on the next one
        with self._wake:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._inflight[info.mid] = row.id
            else:
                self._settle(row.id, early, "refused")
        self.stats["sent"] += 1
        return True


class _SetupError(Exception):
    """Our own configuration stops the connection (not the network): say what to fix."""


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
