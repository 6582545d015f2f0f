"""`wardgate alarms`: the fire brigade's receiver.

Subscribes to a district's alarms and faults through an MQTT v5 shared subscription (several
receivers can share a clustered broker and stand in for each other), dedupes by event id,
acknowledges each alarm back to its gateway (closing the gateway's EN 54-21 supervision loop),
tracks gateway and node liveness, appends every decision to an audit log, optionally forwards to a
webhook, and shows a live terminal view. Survives broker restarts (persistent session).

Connects through the one MQTT connection policy (protocol/mqtt.py: TLS, the password file read on
every attempt, reason codes explained) and retries with the one backoff (protocol/retry.py), the
connection's and the webhook's.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from protocol import mqtt as policy
from protocol.events import DecodeError, Event, Kind, decode, now_ms
from protocol.retry import Backoff
from protocol.topics import DEFAULT_PREFIX, parse

log = logging.getLogger("wardgate.receiver")


@dataclass
class ReceiverOptions:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # wins over `password`; read on every connection
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = DEFAULT_PREFIX
    district: str = "+"
    group: str = "brigade"
    name: str = "receiver"
    audit: Path | None = None
    webhook: str | None = None
    supervision_s: float = 90.0
    server_name: str | None = None  # the name on the broker's certificate, if not `host`

    def endpoint(self) -> policy.Endpoint:
        tls = None
        if self.ca is not None:
            tls = policy.Tls(self.ca, self.cert, self.key, self.server_name)
        return policy.Endpoint(
            host=self.host,
            port=self.port,
            tls=tls,
            username=self.username,
            password=self.password,
            password_file=self.password_file,
            client_id=self.name,
            keepalive_s=10,
            clean_start=False,
            session_expiry_s=86400,
            backoff_initial_s=0.5,
            backoff_max_s=10.0,
            setting="receiver",
            names={
                "username": "--username",
                "password": "--password-file",
                "password_file": "--password-file",
                "tls": "--ca/--cert/--key",
                "tls.ca": "--ca",
            },
        )


@dataclass
class AlarmRow:
    event: Event
    site: str
    gateway_base: str
    received_ms: int
    acked: bool = False


@dataclass
class Liveness:
    online: bool | None = None
    last_seen_ms: int = 0
    silent: bool = False
    nodes_faulted: set[str] = field(default_factory=set)


class AlarmReceiver:
    def __init__(self, opts: ReceiverOptions, out: TextIO | None = None) -> None:
        self.opts = opts
        self.out = out  # JSON lines of what happens, for machines; None = only the live view
        self.lock = threading.RLock()
        self.alarms: OrderedDict[str, AlarmRow] = OrderedDict()
        self.faults: OrderedDict[str, AlarmRow] = OrderedDict()
        self.gateways: dict[str, Liveness] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.counts = {"alarms": 0, "faults": 0, "duplicates": 0, "acks_sent": 0, "undecodable": 0}
        self._audit = None
        if opts.audit is not None:
            self._load_seen(opts.audit)
            self._audit = open(opts.audit, "a", encoding="utf-8")  # noqa: SIM115
        self._webhook_queue: queue.Queue[dict[str, Any] | None] = queue.Queue(10_000)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._session_present = False
        self.conn = policy.Connection(
            opts.endpoint(),
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            logger=log,
            name="receiver",
        )
        self.client: mqtt.Client = self.conn.client
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.conn.start()  # connects, and reconnects with the one backoff
        threading.Thread(target=self._supervise, name="liveness", daemon=True).start()
        if self.opts.webhook:
            threading.Thread(target=self._webhook_worker, name="webhook", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._webhook_queue.put(None)
        self.conn.stop()
        if self._audit is not None:
            self._audit.close()

    # --- MQTT ------------------------------------------------------------------------------
    def _filters(self) -> list[tuple[str, int]]:
        base = f"{self.opts.prefix}/{self.opts.district}/+/+"
        share = f"$share/{self.opts.group}/{base}"
        return [
            (f"{share}/evt/alarm", 1),
            (f"{share}/evt/fault", 1),
            (f"{base}/state", 1),
            (f"{base}/tele", 0),
        ]

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return  # logged, with its hint, by the connection policy
        self._session_present = bool(flags.session_present)
        client.subscribe(self._filters())

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:  # e.g. an account that may not read `tele`: liveness then rests on `state`
            log.info("some subscriptions refused by the broker: %s", refused)
        self.connected.set()  # only now is every alarm from here on routed to us
        self._emit({"what": "connected", "session_present": self._session_present})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning(
                "receiver lost the broker (%s); reconnecting",
                policy.explain(reason_code, self.conn.endpoint),
            )
            self._emit({"what": "disconnected", "reason": str(reason_code)})

    def _on_message(self, client, userdata, msg) -> None:
        parts = parse(msg.topic, self.opts.prefix)
        if parts is None:
            return
        base = f"{self.opts.prefix}/{parts['district']}/{parts['ward']}/{parts['gateway']}"
        site = f"{parts['district']}/{parts['ward']}/{parts['gateway']}"
        with self.lock:
            live = self.gateways.setdefault(site, Liveness())
            live.last_seen_ms = now_ms()
            if live.silent:
                live.silent = False
                self._emit({"what": "gateway_heard", "site": site})
        leaf = parts["leaf"]
        if msg.retain and leaf.startswith("evt/"):
            # a live event never carries the retain flag: a retained one is a replay that
            # Mosquitto 2.0 cannot refuse (docs/provisioning.md, "Retained messages")
            log.warning("ignored a retained %s from %s (events are never retained)", leaf, site)
            return
        if leaf == "state":
            self._on_state(site, msg.payload)
        elif leaf in ("evt/alarm", "evt/fault"):
            self._on_event(site, base, msg.payload)

    def _on_state(self, site: str, payload: bytes) -> None:
        try:
            online = bool(json.loads(payload)["online"])
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            live = self.gateways[site]
            changed = live.online != online
            live.online = online
        if changed:
            self._emit({"what": "gateway_online" if online else "gateway_offline", "site": site})

    def _on_event(self, site: str, base: str, payload: bytes) -> None:
        try:
            event = decode(payload)
        except DecodeError as exc:
            self.counts["undecodable"] += 1
            self._emit({"what": "undecodable", "site": site, "error": str(exc)})
            return
        key = event.id_hex
        with self.lock:
            duplicate = key in self.seen
            if not duplicate:
                self.seen[key] = None
                while len(self.seen) > 200_000:
                    self.seen.popitem(last=False)
        if event.kind is Kind.ALARM:
            self._ack(base, key)  # re-acked on duplicates: the first ack may have been lost
        if duplicate:
            self.counts["duplicates"] += 1
            self._audit_write({"what": "duplicate", "id": key})
            return
        row = AlarmRow(event, site, base, now_ms(), acked=event.kind is Kind.ALARM)
        with self.lock:
            table = self.alarms if event.kind is Kind.ALARM else self.faults
            table[key] = row
            while len(table) > 500:
                table.popitem(last=False)
            if event.kind is Kind.FAULT and event.data.get("code") == "node_silent":
                live = self.gateways[site]
                node = event.source.split("/")[0]
                if event.data.get("active"):
                    live.nodes_faulted.add(node)
                else:
                    live.nodes_faulted.discard(node)
        self.counts["alarms" if event.kind is Kind.ALARM else "faults"] += 1
        record = {"what": str(event.kind), "site": site, "event": event.to_json_dict()}
        self._emit(record)
        if self.opts.webhook:
            try:
                self._webhook_queue.put_nowait(record)
            except queue.Full:
                log.error("webhook queue full; %s not forwarded", key)

    def _ack(self, base: str, event_id: str) -> None:
        body = {"id": event_id, "by": self.opts.name, "time_ms": now_ms()}
        self.client.publish(f"{base}/ack", json.dumps(body).encode(), qos=1)
        self.counts["acks_sent"] += 1

    # --- liveness --------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            limit = now_ms() - int(self.opts.supervision_s * 1000)
            with self.lock:
                newly_silent = [
                    site
                    for site, live in self.gateways.items()
                    if not live.silent and live.online is not False and live.last_seen_ms < limit
                ]
                for site in newly_silent:
                    self.gateways[site].silent = True
            for site in newly_silent:
                self._emit({"what": "gateway_silent", "site": site})

    # --- outputs ---------------------------------------------------------------------------
    def _emit(self, record: dict[str, Any]) -> None:
        record = {"time_ms": now_ms(), **record}
        self._audit_write(record)
        if self.out is not None:
            with self.lock:
                self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
                self.out.flush()

    def _audit_write(self, record: dict[str, Any]) -> None:
        if self._audit is None:
            return
        with self.lock:
            self._audit.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._audit.flush()
            os.fsync(self._audit.fileno())

    def _load_seen(self, audit: Path) -> None:
        """Remember the ids already handled, so a restarted receiver does not show them again."""
        try:
            with open(audit, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    event_id = (rec.get("event") or {}).get("id")
                    if event_id:
                        self.seen[event_id] = None
        except FileNotFoundError:
            pass

    def _webhook_worker(self) -> None:
        while True:
            record = self._webhook_queue.get()
            if record is None:
                return
            delays = Backoff(0.5, 30.0)
            while not self._stop.is_set():
                try:
                    req = urllib.request.Request(
                        self.opts.webhook,
                        data=json.dumps(record).encode(),
                        headers={"Content-Type": "application/json"},
                        method="POST",
                    )
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        if resp.status < 300:
                            break
                except OSError as exc:
                    log.warning("webhook %s failed: %s; retrying", self.opts.webhook, exc)
                self._stop.wait(delays.next())

    # --- the live view ---------------------------------------------------------------------
    def render(self):
        from rich.console import Group
        from rich.table import Table

        now = now_ms()
        alarms = Table(title=f"alarms — receiver {self.opts.name}, district {self.opts.district}")
        for col in ("site", "kind", "sensor", "time", "age", "acked"):
            alarms.add_column(col)
        with self.lock:
            rows = list(self.alarms.values())[-15:] + list(self.faults.values())[-8:]
            rows.sort(key=lambda r: r.received_ms)
            for r in rows:
                e = r.event
                what = str(e.data.get("cause") or e.data.get("code") or e.kind)
                if e.kind is Kind.FAULT:
                    what = f"fault {what} {'ACTIVE' if e.data.get('active') else 'cleared'}"
                alarms.add_row(
                    r.site,
                    what,
                    e.source,
                    time.strftime("%H:%M:%S", time.localtime(e.time_ms / 1000)),
                    f"{(now - e.time_ms) / 1000:.0f}s",
                    "yes" if r.acked else "-",
                    style="bold red" if e.kind is Kind.ALARM else "yellow",
                )
            gateways = Table(title="gateways")
            for col in ("site", "state", "last heard", "silent nodes"):
                gateways.add_column(col)
            for site, live in sorted(self.gateways.items()):
                state = {True: "online", False: "OFFLINE", None: "?"}[live.online]
                if live.silent:
                    state = "SILENT"
                gateways.add_row(
                    site,
                    state,
                    f"{(now - live.last_seen_ms) / 1000:.0f}s ago",
                    ", ".join(sorted(live.nodes_faulted)) or "-",
                    style=None if state == "online" else "bold red",
                )
        return Group(alarms, gateways)


def run_receiver(opts: ReceiverOptions, json_lines: bool, duration: float = 0) -> int:
    import sys

    receiver = AlarmReceiver(opts, out=sys.stdout if json_lines else None)
    receiver.start()
    deadline = time.monotonic() + duration if duration else None
    try:
        if json_lines:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            from rich.live import Live

            with Live(receiver.render(), refresh_per_second=2) as live:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
                    live.update(receiver.render())
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    return 0
