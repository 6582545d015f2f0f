"""The ingest service: broker -> decode -> store -> acknowledge. Nothing a gateway sends stops it.

- Every message is handled inside a catch-all: a payload that does not decode (or any other
  surprise) is quarantined with its raw bytes, topic, time and reason, counted, and acknowledged
  at the MQTT level, so the broker does not redeliver it forever. paho's network thread never
  sees an exception (and `suppress_exceptions` is on besides).
- Messages are acknowledged by hand (paho `manual_ack`): the PUBACK to the broker and the
  transport acknowledgement to the gateway (`<gateway>/ack`, which closes its EN 54-21
  supervision loop) are sent only after the event's transaction has committed. A batch of
  messages shares one commit (group commit) so a burst costs one fsync, not one per event.
- Dedupe is the store's primary key: a redelivered or replayed event changes nothing (and an
  alarm is acknowledged to its gateway again, in case the first ack was lost).
- Only ingest instances join the `$share/<group>/` subscription of events (high availability:
  each alarm goes to one instance). `state`, `tele` and `snap/+` are plain subscriptions: every
  instance keeps liveness. Screens never subscribe: they read the store.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from central.live import LiveState
from central.store import Store
from protocol import mqtt as policy
from protocol.events import DecodeError, Event, Kind, decode, now_ms
from protocol.topics import DEFAULT_PREFIX, parse

log = logging.getLogger("wardgate.ingest")

#: the event kinds the operations center takes in (the brigade's; person events are the police's)
EVENT_LEAVES = ("evt/alarm", "evt/fault", "evt/smoke")
#: a snapshot kept in memory for the site card; bigger ones are not JPEG snapshots
MAX_SNAPSHOT_BYTES = 2 * 1024 * 1024
MAX_SNAPSHOTS = 2000


@dataclass
class IngestOptions:
    endpoint: policy.Endpoint
    prefix: str = DEFAULT_PREFIX
    districts: tuple[str, ...] = ("+",)
    group: str = "ingest"  # the `$share` group of ingest instances
    batch_max: int = 500
    batch_wait_s: float = 0.01  # how long a batch waits to fill: bounds the added latency
    supervision_s: float = 90.0  # a gateway unheard this long (and not offline) is silent
    extra_filters: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Msg:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_ms: int
    generation: int  # the connection it came on: a PUBACK is only valid on that one


class Ingest:
    """One MQTT connection and one writer thread in front of the store."""

    def __init__(
        self,
        store: Store,
        live: LiveState,
        opts: IngestOptions,
        *,
        on_incident: Any = None,  # called with (site, event, Ingested) for each new event
    ) -> None:
        self.store = store
        self.live = live
        self.opts = opts
        self.on_incident = on_incident
        self.snapshots: dict[tuple[str, str], tuple[bytes, int]] = {}
        self._queue: queue.Queue[_Msg | None] = queue.Queue()
        self._tele: dict[str, tuple[dict[str, Any], int]] = {}
        self._tele_lock = threading.Lock()
        self._stop = threading.Event()
        self.ever_connected = False
        self._generation = 0
        self.refused: str | None = None  # why the broker refused our credentials, if it did
        self.conn = policy.Connection(
            opts.endpoint,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            manual_ack=True,
            logger=log,
            name="ingest",
        )
        client = self.conn.client
        client.suppress_exceptions = True  # belt and braces: our callbacks catch everything
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._writer, "ingest-writer"), (self._supervise, "liveness")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.conn.start()

    def stop(self) -> None:
        self._stop.set()
        self.conn.stop()
        self._queue.put(None)
        for t in self._threads:
            t.join(10)

    def filters(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for district in self.opts.districts:
            base = f"{self.opts.prefix}/{district}/+/+"
            out += [(f"$share/{self.opts.group}/{base}/{leaf}", 1) for leaf in EVENT_LEAVES]
            out += [(f"{base}/state", 1), (f"{base}/tele", 0), (f"{base}/snap/+", 0)]
        return out + list(self.opts.extra_filters)

    # --- MQTT callbacks (paho's thread: never raise, never block on the store) -------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                detail = policy.explain(reason_code, self.opts.endpoint)
                if getattr(reason_code, "value", 0) in (0x86, 0x87, 0x8C):
                    self.refused = detail
                self.live.set_broker(False, f"refused: {detail}", refused=self.refused is not None)
                return
            self.ever_connected = True
            self.refused = None
            self._generation += 1
            client.subscribe(self.filters())
        except Exception:
            log.exception("ingest: on_connect failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        try:
            refused = [str(rc) for rc in reason_codes if rc.is_failure]
            if refused:
                log.error(
                    "the broker refused %d of our subscriptions (%s): this account may not "
                    "read all the topics ingest needs (docs/provisioning.md, receiver role)",
                    len(refused),
                    ", ".join(sorted(set(refused))),
                )
            detail = f"connected to {self.opts.endpoint.where}"
            log.info("ingest: subscribed on %s", self.opts.endpoint.where)
            if refused:
                detail += f" ({len(refused)} subscriptions refused)"
            self.live.set_broker(True, detail)
        except Exception:
            log.exception("ingest: on_subscribe failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if not self._stop.is_set():
                detail = policy.explain_disconnect(flags, reason_code, self.opts.endpoint)
                log.warning("ingest lost the broker (%s); reconnecting", detail)
                self.live.set_broker(False, f"disconnected: {detail}")
        except Exception:
            log.exception("ingest: on_disconnect failed")

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._queue.put(
                _Msg(
                    msg.topic,
                    bytes(msg.payload),
                    msg.mid,
                    msg.qos,
                    msg.retain,
                    now_ms(),
                    self._generation,
                )
            )
        except Exception:  # cannot happen short of MemoryError; never kill paho's thread
            log.exception("ingest: could not queue a message on %r", getattr(msg, "topic", "?"))

    # --- the writer ------------------------------------------------------------------------
    def _writer(self) -> None:
        last_tele_flush = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                first = False  # type: ignore[assignment]
            if first is None:
                self._flush_tele()
                return
            batch: list[_Msg] = [first] if first else []
            deadline = time.monotonic() + self.opts.batch_wait_s
            while batch and len(batch) < self.opts.batch_max:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            if batch:
                self._handle_batch(batch)
            if time.monotonic() - last_tele_flush >= 1.0:
                self._flush_tele()
                last_tele_flush = time.monotonic()

    def _handle_batch(self, batch: list[_Msg]) -> None:
        """Store, then acknowledge. A store failure (disk full, database down) acknowledges
        nothing: the messages stay unacknowledged at the broker and come again after a
        reconnect; the writer retries the batch until it goes through."""
        events: list[tuple[str, Event, int, _Msg]] = []
        done: list[_Msg] = []  # handled without an event row (state, tele, snap, quarantine)
        quarantine: list[tuple[_Msg, str]] = []
        states: list[tuple[str, dict[str, Any], _Msg]] = []
        for m in batch:
            try:
                kind, value = self._classify(m)
            except Exception as exc:  # a bug in our own classification: quarantine, go on
                log.exception("ingest: unexpected error on %s", m.topic)
                quarantine.append((m, f"internal error: {exc!r}"[:500]))
                continue
            if kind == "event":
                events.append((value[0], value[1], m.received_ms, m))
            elif kind == "quarantine":
                quarantine.append((m, value))
            elif kind == "state":
                states.append((value[0], value[1], m))
            else:
                done.append(m)
        stored_states = [m for _, _, m in states]
        while not self._stop.is_set():
            try:
                while states:  # one by one: a retry must not write a stored one again
                    site, state, m = states[0]
                    self.store.gateway_state(site, state, m.received_ms)
                    self.live.count("state")
                    states.pop(0)
                results = self.store.ingest(
                    [(site, ev, ms) for site, ev, ms, _ in events],
                    [(m.topic, m.payload, reason, m.received_ms) for m, reason in quarantine],
                )
                break
            except Exception as exc:
                if not self.store.is_transient(exc):
                    # the data, not the disk: find the events the store refuses, quarantine them
                    events, refused = self._split_refused(events)
                    quarantine += refused
                    continue
                log.error("ingest: the store refused a batch of %d (%s); retrying", len(batch), exc)
                self.live.set_broker(self.conn.connected.is_set(), f"store error: {exc}"[:300])
                self._stop.wait(1.0)
        else:
            return  # stopping: nothing acknowledged, the broker redelivers to the next run
        changed = bool(quarantine or stored_states)
        urgent = False  # a new alarm or camera smoke: every screen at once, not batched
        for (site, event, _, _m), result in zip(events, results, strict=True):
            if event.kind is Kind.ALARM:
                self._ack_gateway(site, event.id_hex)
            if result.new:
                self.live.count("events")
                changed = True
                urgent = urgent or event.kind in (Kind.ALARM, Kind.SMOKE)
                if self.on_incident is not None:
                    try:
                        self.on_incident(site, event, result)
                    except Exception:
                        log.exception("ingest: on_incident hook failed")
            else:
                self.live.count("duplicates")
        if quarantine:
            self.live.count("quarantined", len(quarantine))
            for m, reason in quarantine:
                log.warning("quarantined a message on %s: %s", m.topic[:200], reason)
        acks = [*done, *stored_states, *(e[3] for e in events), *(q[0] for q in quarantine)]
        for m in acks:
            self._ack_mqtt(m)
        if self.conn.connected.is_set() and "store error" in self.live.broker.detail:
            self.live.set_broker(True, f"connected to {self.opts.endpoint.where}")
        if changed:
            self.live.changed(urgent=urgent)

    def _split_refused(
        self, events: list[tuple[str, Event, int, _Msg]]
    ) -> tuple[list[tuple[str, Event, int, _Msg]], list[tuple[_Msg, str]]]:
        """Each event alone in a transaction that is rolled back: the ones the store refuses
        for what they carry (not for the disk) go to quarantine, the rest are stored next."""
        keep, refused = [], []
        for item in events:
            try:
                self.store.try_ingest([item[:3]])
                keep.append(item)
            except Exception as exc:
                if self.store.is_transient(exc):
                    keep.append(item)  # the disk again: the retry loop waits for it
                else:
                    refused.append((item[3], f"the store refused the event: {exc}"[:500]))
        return keep, refused

    def _classify(self, m: _Msg) -> tuple[str, Any]:
        """("event", (site, Event)) | ("state", (site, dict)) | ("quarantine", reason) |
        ("done", None)."""
        parts = parse(m.topic, self.opts.prefix)
        if parts is None:
            return "quarantine", "topic outside the wardgate tree"
        site = f"{parts['district']}/{parts['ward']}/{parts['gateway']}"
        leaf = parts["leaf"]
        if leaf in EVENT_LEAVES:
            if m.retain:
                # a live event never carries the retain flag: a retained one is a replay that
                # Mosquitto 2.0 cannot refuse (docs/provisioning.md, "Retained messages")
                return "quarantine", "retained event (events are never retained: a replay?)"
            try:
                event = decode(m.payload)
            except DecodeError as exc:
                return "quarantine", str(exc)[:500]
            expected = Kind(leaf.removeprefix("evt/"))
            if event.kind is not expected:
                return "quarantine", f"an event of kind {event.kind} on {leaf}"
            return "event", (site, event)
        if leaf == "state":
            if not m.payload:  # a cleared retained birth (gateway removed)
                self.live.count("state")
                return "done", None
            try:
                state = json.loads(m.payload)
                if not isinstance(state, dict) or not isinstance(state.get("online"), bool):
                    raise ValueError("not a state object with a boolean `online`")
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
                return "quarantine", f"state: {exc}"[:500]
            return "state", (site, state)
        if leaf == "tele":
            try:
                event = decode(m.payload)
                tele = {"time_ms": event.time_ms, "source": event.source, **event.data}
            except DecodeError as exc:
                return "quarantine", f"tele: {exc}"[:500]
            with self._tele_lock:
                self._tele[site] = (tele, m.received_ms)
            self.live.count("tele")
            return "done", None
        if leaf.startswith("snap/"):
            camera = leaf.removeprefix("snap/")
            if len(m.payload) <= MAX_SNAPSHOT_BYTES and m.payload[:2] == b"\xff\xd8":
                if len(self.snapshots) >= MAX_SNAPSHOTS and (site, camera) not in self.snapshots:
                    self.snapshots.pop(next(iter(self.snapshots)))
                self.snapshots[(site, camera)] = (m.payload, m.received_ms)
                self.live.count("snapshots")
                return "done", None
            return "quarantine", "snapshot is not a JPEG of at most 2 MiB"
        return "quarantine", f"unexpected topic leaf {leaf!r}"

    def _flush_tele(self) -> None:
        with self._tele_lock:
            beats, self._tele = self._tele, {}
        if not beats:
            return
        try:
            self.store.gateway_tele([(site, t, ms) for site, (t, ms) in beats.items()])
            self.live.changed()
        except Exception as exc:
            log.error("ingest: could not store %d heartbeats: %s", len(beats), exc)

    def _ack_gateway(self, site: str, event_id: str) -> None:
        district, ward, gateway = site.split("/", 2)
        body = {"id": event_id, "by": self.opts.endpoint.client_id or "ingest", "time_ms": now_ms()}
        topic = f"{self.opts.prefix}/{district}/{ward}/{gateway}/ack"
        try:
            self.conn.client.publish(topic, json.dumps(body).encode(), qos=1)
            self.live.count("acks_sent")
        except Exception as exc:  # disconnected: the redelivery after reconnect acks again
            log.warning("ingest: could not acknowledge %s to %s: %s", event_id, site, exc)

    def _ack_mqtt(self, m: _Msg) -> None:
        """PUBACK, on the connection the message came on only: after a reconnect the broker
        redelivers it (same packet id) and may already have given that id to another message,
        which an old PUBACK would acknowledge before it is stored."""
        if m.qos == 0 or m.generation != self._generation:
            return
        try:
            self.conn.client.ack(m.mid, m.qos)
        except Exception as exc:  # the connection it came on is gone: the broker redelivers
            log.debug("ingest: PUBACK for mid %s not sent: %s", m.mid, exc)

    # --- liveness --------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            try:
                limit = now_ms() - int(self.opts.supervision_s * 1000)
                silent = self.store.mark_silent(limit)
                if silent:
                    log.warning("gateways silent for %.0f s: %s", self.opts.supervision_s, silent)
                    self.live.changed()
            except Exception as exc:
                log.error("liveness check failed: %s", exc)
