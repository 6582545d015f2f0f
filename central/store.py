"""The operations center's store: SQLite (embedded default) or PostgreSQL (psycopg 3), one schema.

Every piece of mutable state of the operations center has one owner, and this is it: events,
incidents (the dispatchers' queue), faults as state, gateways and their liveness, sites and their
run cards, console accounts, quarantined payloads and the audit trail. Ingest and console both
write through the methods below; each method is one transaction.

The SQL is the portable subset both engines run; the few differences (auto-increment ids, binary
columns, placeholders, upserts on conflict) are the `_Dialect`'s. Migrations are an ordered list,
applied once each and recorded in `schema_migrations`; a database newer than this code is
refused rather than guessed at.

Why not an ORM: the schema is a dozen tables, the queries are plain, and ingest speed is measured
against a bare insert loop (bench/console.py); a thin layer keeps that ratio honest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.events import Event, Kind, Severity
from protocol.faults import describe as describe_fault

#: Queue categories, most urgent first: "fire before faults before tests" (the queue's sort).
CATEGORIES = ("fire", "smoke", "fault", "test")
PRIORITY = {category: rank for rank, category in enumerate(CATEGORIES)}
#: How a dispatcher may close an incident; none may be closed without one.
OUTCOMES = ("fire", "unwanted", "test", "fault")
STATUSES = ("new", "taken", "held", "dispatched", "resolved")
ROLES = ("viewer", "dispatcher", "supervisor")

#: One incident per (site, category) while it is open: an alarm storm from one site is one line
#: in the queue with a count, and every event stays stored and visible (flood control that
#: groups and never drops).


class StoreError(Exception):
    """The store refused: unknown incident, a transition that is not allowed, a bad value."""


class Conflict(StoreError):
    """Someone else holds the incident; `owner` says who (the console warns before taking)."""

    def __init__(self, message: str, owner: str | None) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True)
class Ingested:
    """What storing one event did: `new` False for a duplicate (already stored, ack again)."""

    event_id: str
    new: bool
    incident_id: int | None = None
    incident_new: bool = False


def category_of(event: Event) -> str | None:
    """The queue category an event opens, or None (readings, person, telemetry, cleared faults)."""
    if event.kind is Kind.ALARM:
        return "test" if is_test(event) else "fire"
    if event.kind is Kind.SMOKE:
        return "test" if is_test(event) else "smoke"
    if event.kind is Kind.FAULT and event.data.get("active") is True:
        return "fault"
    return None


def is_test(event: Event) -> bool:
    return event.data.get("cause") == "test" or event.data.get("test") is True


def label_of(labels: dict[str, str] | None, source: str) -> str | None:
    """A source's human label from the gateway's birth: the source's own, else its node's or
    detector's ("n07/heat" -> "kitchen node (heat)"), else None."""
    labels = labels or {}
    if source in labels:
        return labels[source]
    head, _, rest = source.partition("/")
    if rest and head in labels:
        return f"{labels[head]} ({rest})"
    return None


# --- schema --------------------------------------------------------------------------------
# {pk} is an auto-increment integer primary key, {blob} a binary column.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "initial schema",
        """
CREATE TABLE gateways (
    site TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    ward TEXT NOT NULL,
    gateway TEXT NOT NULL,
    online INTEGER,
    state_json TEXT,
    state_ms BIGINT,
    tele_json TEXT,
    tele_ms BIGINT,
    last_seen_ms BIGINT NOT NULL DEFAULT 0,
    silent INTEGER NOT NULL DEFAULT 0,
    labels_json TEXT
);
CREATE TABLE sites (
    site TEXT PRIMARY KEY,
    name TEXT,
    address TEXT,
    latitude DOUBLE PRECISION,
    longitude DOUBLE PRECISION,
    contact_name TEXT,
    contact_phone TEXT,
    access TEXT,
    key_box TEXT,
    hazards TEXT,
    notes TEXT,
    source TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    updated_by TEXT
);
CREATE TABLE incidents (
    id {pk},
    site TEXT NOT NULL,
    category TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    summary TEXT NOT NULL,
    event_count INTEGER NOT NULL,
    first_event TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    owner TEXT,
    taken_ms BIGINT,
    held_until_ms BIGINT,
    dispatched_ms BIGINT,
    resolved_ms BIGINT,
    escalated_ms BIGINT,
    cleared_ms BIGINT,
    outcome TEXT,
    note TEXT,
    revision INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX incidents_open ON incidents (status, priority, received_ms);
CREATE INDEX incidents_site ON incidents (site, category, status);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    district TEXT NOT NULL,
    ward TEXT NOT NULL,
    gateway TEXT NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    clock_synced INTEGER NOT NULL,
    received_ms BIGINT NOT NULL,
    test INTEGER NOT NULL,
    data_json TEXT NOT NULL,
    incident_id BIGINT
);
CREATE INDEX events_received ON events (received_ms);
CREATE INDEX events_site ON events (site, received_ms);
CREATE INDEX events_incident ON events (incident_id);
CREATE TABLE faults (
    site TEXT NOT NULL,
    source TEXT NOT NULL,
    code TEXT NOT NULL,
    active INTEGER NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    cleared_ms BIGINT,
    event_id TEXT NOT NULL,
    incident_id BIGINT,
    PRIMARY KEY (site, source, code)
);
CREATE TABLE quarantine (
    id {pk},
    received_ms BIGINT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload {blob} NOT NULL
);
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    display_name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE audit (
    id {pk},
    time_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    incident_id BIGINT,
    site TEXT,
    detail_json TEXT
);
CREATE INDEX audit_incident ON audit (incident_id);
""",
    ),
)
MIGRATIONS += (
    (
        2,
        "ingest status for every screen; durable hand-over to alarm receiving centres",
        """
CREATE TABLE service_status (
    instance TEXT PRIMARY KEY,
    broker_connected INTEGER NOT NULL,
    detail TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    counts_json TEXT
);
CREATE TABLE handover (
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (event_id, target)
);
CREATE INDEX handover_pending ON handover (target, state);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
#: the event kinds handed over to an alarm receiving centre (SIA DC-09): fire, smoke, faults
HANDOVER_KINDS = frozenset({Kind.ALARM, Kind.SMOKE, Kind.FAULT})


class _Dialect:
    name = "sqlite"
    pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    blob = "BLOB"
    param = "?"

    def sql(self, text: str) -> str:
        return text


class _Postgres(_Dialect):
    name = "postgresql"
    pk = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    blob = "BYTEA"
    param = "%s"

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")


def _now() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """One database connection, used under a lock: ingest's writer and the console share it.

    SQLite runs in WAL mode with `synchronous=FULL`: a commit is on disk when it returns, which
    is what lets ingest acknowledge an alarm right after it.
    """

    def __init__(self, url: str | Path, *, handover_targets: Iterable[str] = ()) -> None:
        self.url = str(url)
        # each new alarm, smoke or fault event is queued for these targets (e.g. "dc09") in its
        # own ingest transaction: a hand-over survives a crash between the commit and the send
        self.handover_targets = tuple(handover_targets)
        self._lock = threading.RLock()
        if self.url.startswith(("postgresql://", "postgres://")):
            import psycopg  # the operations center's install has it; SQLite users never load it

            self.dialect: _Dialect = _Postgres()
            self._conn = psycopg.connect(self.url, autocommit=False)
            self._integrity = psycopg.errors.UniqueViolation
        else:
            path = self.url.removeprefix("sqlite:///").removeprefix("sqlite://")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.dialect = _Dialect()
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._integrity = sqlite3.IntegrityError
        self.migrate()

    # --- plumbing --------------------------------------------------------------------------
    def is_transient(self, exc: BaseException) -> bool:
        """Would the same write succeed later (disk full, database down, lock timeout)? Else
        the data itself was refused, and retrying it would stop ingest for good."""
        if isinstance(exc, sqlite3.OperationalError):
            return True
        if self.dialect.name == "postgresql":
            import psycopg

            return isinstance(exc, psycopg.OperationalError)
        return False

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[_Cursor]:
        """One transaction; committed (durably) on exit, rolled back on an exception."""
        with self._lock:
            cur = _Cursor(self._conn.cursor(), self.dialect)
            if self.dialect.name == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self._conn.rollback() if self.dialect.name != "sqlite" else cur.execute("ROLLBACK")
                raise
            if self.dialect.name == "sqlite":
                cur.execute("COMMIT")
            else:
                self._conn.commit()

    def migrate(self) -> int:
        """Apply the migrations this database lacks; refuse a database newer than this code."""
        with self.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
            )
            cur.execute("SELECT MAX(version) FROM schema_migrations")
            have = cur.fetchone()[0] or 0
            if have > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url}: database schema version {have} is newer than this wardgate "
                    f"({SCHEMA_VERSION}); upgrade wardgate on this host"
                )
            for version, name, script in MIGRATIONS:
                if version <= have:
                    continue
                script = script.format(pk=self.dialect.pk, blob=self.dialect.blob)
                for statement in filter(str.strip, script.split(";")):
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
                    (version, name, _now()),
                )
            return SCHEMA_VERSION

    def schema_version(self) -> int:
        with self.transaction() as cur:
            cur.execute("SELECT MAX(version) FROM schema_migrations")
            return cur.fetchone()[0] or 0

    # --- ingest ----------------------------------------------------------------------------
    def ingest(
        self,
        items: Sequence[tuple[str, Event, int]],
        quarantine: Sequence[tuple[str, bytes, str, int]] = (),
    ) -> list[Ingested]:
        """Store a batch of (site "d/w/g", event, received_ms), and of payloads that did not
        decode (topic, raw bytes, reason, received_ms), in one durable transaction.

        Duplicates (the id is already stored: a redelivery, or a second ingest instance) come
        back with `new` False and change nothing. Returns one result per item, in order.
        """
        results: list[Ingested] = []
        with self.transaction() as cur:
            self._ingest_batch(cur, items, results)
            for topic, payload, reason, received_ms in quarantine:
                self._quarantine(cur, topic, payload, reason, received_ms)
        return results

    #: ids looked up per statement when a batch is checked for duplicates
    _DEDUPE_CHUNK = 500

    def _ingest_batch(
        self, cur: _Cursor, items: Sequence[tuple[str, Event, int]], results: list[Ingested]
    ) -> None:
        """A batch costs one duplicate lookup per 500 events and one liveness write per
        gateway, not one of each per event (on PostgreSQL each statement is a round trip)."""
        ids = list(dict.fromkeys(event.id_hex for _, event, _ in items))
        known: dict[str, int | None] = {}
        for start in range(0, len(ids), self._DEDUPE_CHUNK):
            chunk = ids[start : start + self._DEDUPE_CHUNK]
            cur.execute(
                f"SELECT id, incident_id FROM events WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            known.update({row[0]: row[1] for row in cur.fetchall()})
        last_seen: dict[str, int] = {}
        for site, event, received_ms in items:
            if event.id_hex not in known:
                last_seen[site] = max(received_ms, last_seen.get(site, received_ms))
        for site, received_ms in last_seen.items():
            self._ensure_gateway(cur, site, received_ms)
        for site, event, received_ms in items:
            key = event.id_hex
            if key in known:  # stored before, or earlier in this batch
                results.append(Ingested(key, False, known[key]))
                continue
            result = self._ingest_new(cur, site, event, received_ms)
            known[key] = result.incident_id
            results.append(result)

    def try_ingest(self, items: Sequence[tuple[str, Event, int]]) -> None:
        """Run `ingest` and roll it back: raises what storing these would raise."""

        class _Rollback(Exception):
            pass

        try:
            with self.transaction() as cur:
                self._ingest_batch(cur, items, [])
                raise _Rollback
        except _Rollback:
            pass

    def _ingest_new(self, cur: _Cursor, site: str, event: Event, received_ms: int) -> Ingested:
        """One event not stored before (the batch checked), its gateway already ensured."""
        key = event.id_hex
        district, ward, gateway = site.split("/", 2)
        incident_id, incident_new = None, False
        category = category_of(event)
        if event.kind is Kind.FAULT:
            incident_id, incident_new = self._fault_state(cur, site, event, received_ms, category)
        elif category is not None:
            incident_id, incident_new = self._open_incident(
                cur, site, category, event, received_ms, _summary(event)
            )
        cur.execute(
            "INSERT INTO events (id, kind, site, district, ward, gateway, source, severity,"
            " time_ms, clock_synced, received_ms, test, data_json, incident_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                str(event.kind),
                site,
                district,
                ward,
                gateway,
                event.source,
                event.severity.name.lower(),
                event.time_ms,
                int(event.clock_synced),
                received_ms,
                int(is_test(event)),
                json.dumps(event.data, default=_json_default, separators=(",", ":")),
                incident_id,
            ),
        )
        if event.kind in HANDOVER_KINDS:
            for target in self.handover_targets:
                cur.execute(
                    "INSERT INTO handover (event_id, target, state, updated_ms)"
                    " VALUES (?, ?, 'pending', ?)",
                    (key, target, received_ms),
                )
        return Ingested(key, True, incident_id, incident_new)

    def _open_incident(
        self, cur: _Cursor, site: str, category: str, event: Event, now: int, summary: str
    ) -> tuple[int, bool]:
        """Join the site's open incident of this category, or open one."""
        cur.execute(
            "SELECT id FROM incidents WHERE site = ? AND category = ? AND status <> 'resolved'"
            " ORDER BY id LIMIT 1",
            (site, category),
        )
        row = cur.fetchone()
        if row is not None:
            cur.execute(
                "UPDATE incidents SET event_count = event_count + 1, last_ms = ?,"
                " revision = revision + 1 WHERE id = ?",
                (now, row[0]),
            )
            return int(row[0]), False
        incident_id = cur.insert_returning_id(
            "INSERT INTO incidents (site, category, priority, status, source, summary,"
            " event_count, first_event, received_ms, last_ms)"
            " VALUES (?, ?, ?, 'new', ?, ?, 1, ?, ?, ?)",
            (site, category, PRIORITY[category], event.source, summary, event.id_hex, now, now),
        )
        cur.audit("system", "incident_opened", incident_id, site, {"category": category})
        return incident_id, True

    def _fault_state(
        self, cur: _Cursor, site: str, event: Event, now: int, category: str | None
    ) -> tuple[int | None, bool]:
        """A fault is state: one row per (site, source, code), active or cleared."""
        code = str(event.data.get("code") or "unknown")
        active = event.data.get("active") is True
        cur.execute(
            "SELECT active, incident_id FROM faults WHERE site = ? AND source = ? AND code = ?",
            (site, event.source, code),
        )
        row = cur.fetchone()
        incident_id, incident_new = (row[1] if row else None), False
        if active:
            if row is None or not row[0]:
                incident_id, incident_new = self._open_incident(
                    cur, site, "fault", event, now, _summary(event)
                )
            if row is None:
                cur.execute(
                    "INSERT INTO faults (site, source, code, active, first_ms, last_ms,"
                    " event_id, incident_id) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                    (site, event.source, code, now, now, event.id_hex, incident_id),
                )
            else:
                cur.execute(
                    "UPDATE faults SET active = 1, first_ms = CASE WHEN active = 1 THEN first_ms"
                    " ELSE ? END, last_ms = ?, cleared_ms = NULL, event_id = ?, incident_id = ?"
                    " WHERE site = ? AND source = ? AND code = ?",
                    (now, now, event.id_hex, incident_id, site, event.source, code),
                )
        elif row is not None and row[0]:
            cur.execute(
                "UPDATE faults SET active = 0, last_ms = ?, cleared_ms = ?, event_id = ?"
                " WHERE site = ? AND source = ? AND code = ?",
                (now, now, event.id_hex, site, event.source, code),
            )
            if incident_id is not None:
                cur.execute(
                    "UPDATE incidents SET cleared_ms = ?, revision = revision + 1"
                    " WHERE id = ? AND status <> 'resolved'",
                    (now, incident_id),
                )
        return incident_id, incident_new

    def quarantine(self, topic: str, payload: bytes, reason: str, received_ms: int) -> int:
        """Keep a payload that did not decode: raw bytes, topic, time and reason."""
        with self.transaction() as cur:
            return self._quarantine(cur, topic, payload, reason, received_ms)

    def _quarantine(
        self, cur: _Cursor, topic: str, payload: bytes, reason: str, received_ms: int
    ) -> int:
        return cur.insert_returning_id(
            "INSERT INTO quarantine (received_ms, topic, reason, payload) VALUES (?, ?, ?, ?)",
            (received_ms, topic[:1024], reason[:1024], bytes(payload)),
        )

    def quarantined(self, limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
        with self.transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM quarantine")
            total = int(cur.fetchone()[0])
            cur.execute(
                "SELECT id, received_ms, topic, reason, payload FROM quarantine"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            rows = [
                {
                    "id": r[0],
                    "received_ms": r[1],
                    "topic": r[2],
                    "reason": r[3],
                    "size": len(bytes(r[4])),
                    "hex": bytes(r[4])[:64].hex(),
                }
                for r in cur.fetchall()
            ]
        return total, rows

    # --- hand-over to alarm receiving centres ---------------------------------------------
    def handover_result(self, event_id: str, target: str, state: str) -> None:
        """`acked` ends a hand-over; `failed` (still retried) and `rejected` are recorded."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE handover SET state = ?, updated_ms = ? WHERE event_id = ? AND target = ?",
                (state, _now(), event_id, target),
            )
            if state != "acked":
                cur.audit("system", f"handover_{state}", None, None,
                          {"event": event_id, "target": target})  # fmt: skip

    def handover_pending(self, target: str) -> list[tuple[str, Event]]:
        """(site, event) of every hand-over not acknowledged yet, oldest first: sent again
        after a restart."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT e.site, e.id, e.kind, e.source, e.severity, e.time_ms, e.data_json"
                " FROM handover h JOIN events e ON e.id = h.event_id"
                " WHERE h.target = ? AND h.state <> 'acked' ORDER BY e.received_ms, e.id",
                (target,),
            )
            rows = cur.fetchall()
        out = []
        for site, eid, kind, source, severity, time_ms, data_json in rows:
            event = Event(
                Kind(kind), source, json.loads(data_json), severity=Severity[severity.upper()],
                id=bytes.fromhex(eid), time_ms=time_ms,
            )  # fmt: skip
            out.append((site, event))
        return out

    # --- the ingest instances' status (every screen shows it) ---------------------------------
    def set_status(
        self, instance: str, connected: bool, detail: str, since_ms: int, counts: dict[str, int]
    ) -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO service_status (instance, broker_connected, detail, since_ms,"
                " heartbeat_ms, counts_json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance)"
                " DO UPDATE SET broker_connected = excluded.broker_connected,"
                " detail = excluded.detail, since_ms = excluded.since_ms,"
                " heartbeat_ms = excluded.heartbeat_ms, counts_json = excluded.counts_json",
                (instance, int(connected), detail[:500], since_ms, _now(), json.dumps(counts)),
            )

    def status(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            cur.execute(
                "SELECT instance, broker_connected, detail, since_ms, heartbeat_ms, counts_json"
                " FROM service_status ORDER BY instance"
            )
            rows = cur.fetchall()
        return [
            {
                "instance": r[0],
                "connected": bool(r[1]),
                "detail": r[2],
                "since_ms": r[3],
                "heartbeat_ms": r[4],
                "counts": _loads(r[5]) or {},
            }
            for r in rows
        ]

    # --- gateways --------------------------------------------------------------------------
    def _ensure_gateway(self, cur: _Cursor, site: str, now: int) -> None:
        district, ward, gateway = site.split("/", 2)
        cur.execute(
            "INSERT INTO gateways (site, district, ward, gateway, last_seen_ms) VALUES"
            " (?, ?, ?, ?, ?) ON CONFLICT (site) DO UPDATE SET last_seen_ms ="
            " CASE WHEN excluded.last_seen_ms > gateways.last_seen_ms"
            " THEN excluded.last_seen_ms ELSE gateways.last_seen_ms END, silent = 0",
            (site, district, ward, gateway, now),
        )

    def gateway_state(self, site: str, state: dict[str, Any], received_ms: int) -> None:
        """The retained birth / last will: online, version, site metadata and sensor labels."""
        with self.transaction() as cur:
            self._ensure_gateway(cur, site, received_ms)
            labels = state.get("labels") if isinstance(state.get("labels"), dict) else None
            cur.execute(
                "UPDATE gateways SET online = ?, state_json = ?, state_ms = ?,"
                " labels_json = COALESCE(?, labels_json) WHERE site = ?",
                (
                    int(bool(state.get("online"))),
                    json.dumps(state, default=str)[:65536],
                    received_ms,
                    json.dumps(labels) if labels is not None else None,
                    site,
                ),
            )
            meta = state.get("site")
            if isinstance(meta, dict):
                self._site_from_birth(cur, site, meta, received_ms)

    def gateway_tele(self, beats: Iterable[tuple[str, dict[str, Any], int]]) -> None:
        """Last telemetry per gateway (batched: heartbeats arrive from every gateway)."""
        with self.transaction() as cur:
            for site, tele, received_ms in beats:
                self._ensure_gateway(cur, site, received_ms)
                cur.execute(
                    "UPDATE gateways SET tele_json = ?, tele_ms = ? WHERE site = ?",
                    (json.dumps(tele, default=str)[:65536], received_ms, site),
                )

    def mark_silent(self, older_than_ms: int) -> list[str]:
        """Gateways online (or unknown) but not heard since `older_than_ms`: now silent."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT site FROM gateways WHERE silent = 0 AND (online IS NULL OR online = 1)"
                " AND last_seen_ms < ?",
                (older_than_ms,),
            )
            sites = [r[0] for r in cur.fetchall()]
            for site in sites:
                cur.execute("UPDATE gateways SET silent = 1 WHERE site = ?", (site,))
                cur.audit("system", "gateway_silent", None, site, {})
        return sites

    def gateways(self, sites: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every gateway with its site card, or only those of `sites` (the queue's: a screen's
        refresh must not decode a whole city's heartbeats, bench/console.py)."""
        sql = (
            "SELECT g.site, g.district, g.ward, g.gateway, g.online, g.last_seen_ms, g.silent,"
            " g.state_json, g.tele_json, g.tele_ms, g.labels_json, s.name, s.address,"
            " s.latitude, s.longitude, s.contact_name, s.contact_phone"
            " FROM gateways g LEFT JOIN sites s ON s.site = g.site"
        )
        args: list[str] = []
        if sites is not None:
            args = sorted(set(sites))
            if not args:
                return []
            sql += f" WHERE g.site IN ({', '.join('?' * len(args))})"
        with self.transaction() as cur:
            cur.execute(sql + " ORDER BY g.site", args)
            rows = cur.fetchall()
        # the JSON is decoded outside the store's lock: with 1,000 gateways that is ~10 ms that
        # ingest's writer (an alarm's commit) no longer waits behind (bench/console.py)
        return [_gateway_row(r) for r in rows]

    def gateway(self, site: str) -> dict[str, Any] | None:
        rows = self.gateways([site])
        return rows[0] if rows else None

    def gateway_counts(self) -> tuple[int, int]:
        """(gateways, of them silent or offline): the header's count without decoding any."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN silent = 1 OR online = 0 THEN 1 ELSE 0"
                " END), 0) FROM gateways"
            )
            total, unwell = cur.fetchone()
        return int(total), int(unwell)

    # --- sites and run cards ---------------------------------------------------------------
    SITE_FIELDS = (
        "name",
        "address",
        "latitude",
        "longitude",
        "contact_name",
        "contact_phone",
        "access",
        "key_box",
        "hazards",
        "notes",
    )

    def _site_from_birth(self, cur: _Cursor, site: str, meta: dict[str, Any], now: int) -> None:
        """A birth fills a site's fields, but never overwrites what a person edited."""
        cur.execute("SELECT source FROM sites WHERE site = ?", (site,))
        row = cur.fetchone()
        if row is not None and row[0] == "console":
            return
        values = {k: meta.get(k) for k in self.SITE_FIELDS if k in meta}
        if "notes" not in values and "access" in meta:
            values["access"] = meta.get("access")
        self._write_site(cur, site, values, "birth", now, None, exists=row is not None)

    def upsert_site(
        self, site: str, fields: dict[str, Any], actor: str, source: str = "console"
    ) -> None:
        """A person's edit of a site card / run card (audited), or an import (`source`)."""
        unknown = set(fields) - set(self.SITE_FIELDS)
        if unknown:
            raise StoreError(f"unknown site fields {sorted(unknown)}")
        now = _now()
        with self.transaction() as cur:
            cur.execute("SELECT 1 FROM sites WHERE site = ?", (site,))
            exists = cur.fetchone() is not None
            self._write_site(cur, site, fields, source, now, actor, exists=exists)
            cur.audit(actor, "site_edited", None, site, fields)

    def _write_site(
        self,
        cur: _Cursor,
        site: str,
        values: dict[str, Any],
        source: str,
        now: int,
        actor: str | None,
        *,
        exists: bool,
    ) -> None:
        values = {k: values[k] for k in self.SITE_FIELDS if k in values}
        if not exists:
            cols = ["site", *values, "source", "updated_ms", "updated_by"]
            cur.execute(
                f"INSERT INTO sites ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                (site, *values.values(), source, now, actor),
            )
        else:
            sets = ", ".join(f"{k} = ?" for k in values)
            sets = (sets + ", " if sets else "") + "source = ?, updated_ms = ?, updated_by = ?"
            cur.execute(
                f"UPDATE sites SET {sets} WHERE site = ?",
                (*values.values(), source, now, actor, site),
            )

    def site(self, site: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cols = ", ".join(self.SITE_FIELDS)
            cur.execute(
                f"SELECT {cols}, source, updated_ms, updated_by FROM sites WHERE site = ?", (site,)
            )
            row = cur.fetchone()
        if row is None:
            return None
        keys = (*self.SITE_FIELDS, "source", "updated_ms", "updated_by")
        return dict(zip(keys, row, strict=True))

    # --- the queue -------------------------------------------------------------------------
    _INCIDENT_COLS = (
        "id, site, category, priority, status, source, summary, event_count, first_event,"
        " received_ms, last_ms, owner, taken_ms, held_until_ms, dispatched_ms, resolved_ms,"
        " escalated_ms, cleared_ms, outcome, note, revision"
    )

    def queue(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Open incidents: priority first (fire, smoke, fault, test), then the longest waiting.

        A held incident whose timer ran out is back in the queue (status `new` again, the
        change audited) before it is listed.
        """
        now = _now() if now_ms is None else now_ms
        self.release_expired_holds(now)
        with self.transaction() as cur:
            cur.execute(
                f"SELECT {self._INCIDENT_COLS} FROM incidents WHERE status <> 'resolved'"
                " ORDER BY priority, received_ms, id"
            )
            rows = [_incident_row(r) for r in cur.fetchall()]
            # every sensor of a grouped incident, first seen first
            cur.execute(
                "SELECT e.incident_id, e.source, MIN(e.received_ms) AS first FROM events e"
                " JOIN incidents i ON i.id = e.incident_id WHERE i.status <> 'resolved'"
                " GROUP BY e.incident_id, e.source ORDER BY first"
            )
            sources: dict[int, list[str]] = {}
            for incident_id, source, _ in cur.fetchall():
                sources.setdefault(int(incident_id), []).append(source)
        for row in rows:
            row["sources"] = sources.get(row["id"], [row["source"]])
        return rows

    def release_expired_holds(self, now_ms: int) -> list[int]:
        with self.transaction() as cur:
            cur.execute(
                "SELECT id, site, owner FROM incidents"
                " WHERE status = 'held' AND held_until_ms <= ?",
                (now_ms,),
            )
            due = cur.fetchall()
            for incident_id, site, owner in due:
                cur.execute(
                    "UPDATE incidents SET status = 'new', owner = NULL, held_until_ms = NULL,"
                    " revision = revision + 1 WHERE id = ?",
                    (incident_id,),
                )
                cur.audit("system", "hold_expired", incident_id, site, {"was_held_by": owner})
        return [int(r[0]) for r in due]

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cur.execute(f"SELECT {self._INCIDENT_COLS} FROM incidents WHERE id = ?", (incident_id,))
            row = cur.fetchone()
            if row is None:
                return None
            out = _incident_row(row)
            cur.execute(
                "SELECT id, kind, source, time_ms, received_ms, data_json, test FROM events"
                " WHERE incident_id = ? ORDER BY received_ms, id LIMIT 500",
                (incident_id,),
            )
            out["events"] = [
                {
                    "id": r[0],
                    "kind": r[1],
                    "source": r[2],
                    "time_ms": r[3],
                    "received_ms": r[4],
                    "data": json.loads(r[5]),
                    "test": bool(r[6]),
                }
                for r in cur.fetchall()
            ]
            cur.execute(
                "SELECT time_ms, actor, action, detail_json FROM audit WHERE incident_id = ?"
                " ORDER BY id",
                (incident_id,),
            )
            out["audit"] = [
                {"time_ms": r[0], "actor": r[1], "action": r[2], "detail": _loads(r[3])}
                for r in cur.fetchall()
            ]
        return out

    def _load_open(self, cur: _Cursor, incident_id: int) -> dict[str, Any]:
        cur.execute(f"SELECT {self._INCIDENT_COLS} FROM incidents WHERE id = ?", (incident_id,))
        row = cur.fetchone()
        if row is None:
            raise StoreError(f"no incident {incident_id}")
        inc = _incident_row(row)
        if inc["status"] == "resolved":
            raise StoreError(f"incident {incident_id} is already resolved")
        return inc

    def take(self, incident_id: int, actor: str, *, force: bool = False) -> dict[str, Any]:
        """Accept an incident: it is `actor`'s now. Taking it from a colleague needs `force`."""
        now = _now()
        with self.transaction() as cur:
            inc = self._load_open(cur, incident_id)
            owner = inc["owner"]
            if owner and owner != actor and not force:
                raise Conflict(f"incident {incident_id} is held by {owner}", owner)
            status = "dispatched" if inc["status"] == "dispatched" else "taken"
            cur.execute(
                "UPDATE incidents SET owner = ?, status = ?, held_until_ms = NULL,"
                " taken_ms = COALESCE(taken_ms, ?), revision = revision + 1 WHERE id = ?",
                (actor, status, now, incident_id),
            )
            action = "taken_over" if owner and owner != actor else "taken"
            cur.audit(actor, action, incident_id, inc["site"], {"from": owner} if owner else {})
        return self.incident(incident_id) or {}

    def hold(self, incident_id: int, actor: str, seconds: float, note: str = "") -> None:
        """Snooze: out of the queue until the timer runs out, then back in (unowned)."""
        if not 0 < seconds <= 24 * 3600:
            raise StoreError("hold for between 1 s and 24 h")
        now = _now()
        with self.transaction() as cur:
            inc = self._require_owner(cur, incident_id, actor)
            cur.execute(
                "UPDATE incidents SET status = 'held', held_until_ms = ?, revision = revision + 1"
                " WHERE id = ?",
                (now + int(seconds * 1000), incident_id),
            )
            cur.audit(actor, "held", incident_id, inc["site"], {"seconds": seconds, "note": note})

    def release(self, incident_id: int, actor: str) -> None:
        """Give an incident back to the queue."""
        with self.transaction() as cur:
            inc = self._require_owner(cur, incident_id, actor)
            cur.execute(
                "UPDATE incidents SET status = 'new', owner = NULL, held_until_ms = NULL,"
                " revision = revision + 1 WHERE id = ?",
                (incident_id,),
            )
            cur.audit(actor, "released", incident_id, inc["site"], {})

    def dispatch(self, incident_id: int, actor: str, note: str = "") -> None:
        now = _now()
        with self.transaction() as cur:
            inc = self._require_owner(cur, incident_id, actor)
            cur.execute(
                "UPDATE incidents SET status = 'dispatched', dispatched_ms = COALESCE("
                "dispatched_ms, ?), note = ?, revision = revision + 1 WHERE id = ?",
                (now, _join_note(inc["note"], actor, note), incident_id),
            )
            cur.audit(actor, "dispatched", incident_id, inc["site"], {"note": note})

    def resolve(self, incident_id: int, actor: str, outcome: str, note: str = "") -> None:
        """Close with an outcome (fire, unwanted, test, fault): none closes without one."""
        if outcome not in OUTCOMES:
            raise StoreError(f"an incident is closed with an outcome: one of {', '.join(OUTCOMES)}")
        now = _now()
        with self.transaction() as cur:
            inc = self._require_owner(cur, incident_id, actor)
            cur.execute(
                "UPDATE incidents SET status = 'resolved', resolved_ms = ?, outcome = ?, note = ?,"
                " held_until_ms = NULL, revision = revision + 1 WHERE id = ?",
                (now, outcome, _join_note(inc["note"], actor, note), incident_id),
            )
            cur.audit(
                actor, "resolved", incident_id, inc["site"], {"outcome": outcome, "note": note}
            )

    def _require_owner(self, cur: _Cursor, incident_id: int, actor: str) -> dict[str, Any]:
        inc = self._load_open(cur, incident_id)
        if inc["owner"] != actor:
            who = inc["owner"] or "nobody"
            raise Conflict(f"incident {incident_id} is held by {who}: take it first", inc["owner"])
        return inc

    def escalate_due(self, now_ms: int, after_s: float) -> list[dict[str, Any]]:
        """Incidents nobody accepted within `after_s`: marked escalated once, returned."""
        limit = now_ms - int(after_s * 1000)
        with self.transaction() as cur:
            cur.execute(
                f"SELECT {self._INCIDENT_COLS} FROM incidents WHERE status = 'new'"
                " AND escalated_ms IS NULL AND received_ms <= ? AND category <> 'test'",
                (limit,),
            )
            due = [_incident_row(r) for r in cur.fetchall()]
            for inc in due:
                cur.execute(
                    "UPDATE incidents SET escalated_ms = ?, revision = revision + 1 WHERE id = ?",
                    (now_ms, inc["id"]),
                )
                cur.audit("system", "escalated", inc["id"], inc["site"], {"after_s": after_s})
                inc["escalated_ms"] = now_ms
        return due

    # --- history, report, audit ------------------------------------------------------------
    def history(
        self,
        *,
        district: str | None = None,
        ward: str | None = None,
        gateway: str | None = None,
        kind: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, filtered: the history page and its CSV export.

        `text` is a case-insensitive substring of the site, the source or the event's data (a
        dispatcher remembers "kitchen" or "n07", not a gateway id).
        """
        where, args = [], []
        for col, value in (("district", district), ("ward", ward), ("gateway", gateway),
                           ("kind", kind)):  # fmt: skip
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if text:
            escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
            like = "LIKE ? ESCAPE '\\'"
            where.append(f"(LOWER(site) {like} OR LOWER(source) {like} OR LOWER(data_json) {like})")
            args.extend([pattern] * 3)
        if since_ms is not None:
            where.append("received_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("received_ms < ?")
            args.append(until_ms)
        sql = (
            "SELECT id, kind, site, district, ward, gateway, source, severity, time_ms,"
            " received_ms, test, data_json, incident_id FROM events"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_ms DESC, id LIMIT ?"
        args.append(int(limit))
        with self.transaction() as cur:
            cur.execute(sql, args)
            keys = ("id", "kind", "site", "district", "ward", "gateway", "source", "severity",
                    "time_ms", "received_ms", "test", "data", "incident_id")  # fmt: skip
            out = []
            for r in cur.fetchall():
                row = dict(zip(keys, r, strict=True))
                row["data"] = json.loads(row["data"])
                row["test"] = bool(row["test"])
                out.append(row)
        return out

    def faults(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        sql = (
            "SELECT site, source, code, active, first_ms, last_ms, cleared_ms, incident_id"
            " FROM faults"
        )
        if active_only:
            sql += " WHERE active = 1"
        sql += " ORDER BY first_ms"
        with self.transaction() as cur:
            cur.execute(sql)
            keys = ("site", "source", "code", "active", "first_ms", "last_ms", "cleared_ms",
                    "incident_id")  # fmt: skip
            rows = [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["active"] = bool(row["active"])
            row["description"] = describe_fault(row["code"])
        return rows

    def report(self, since_ms: int, until_ms: int, target_s: float = 90.0) -> dict[str, Any]:
        """Response times of incidents received in [since, until): the share handled in target.

        NFPA 72 allows 90 s to the supervising station and 90 s to handle; `target_s` is the
        time from received to taken.
        """
        with self.transaction() as cur:
            cur.execute(
                "SELECT category, received_ms, taken_ms, dispatched_ms, resolved_ms FROM incidents"
                " WHERE received_ms >= ? AND received_ms < ?",
                (since_ms, until_ms),
            )
            rows = cur.fetchall()
        by: dict[str, dict[str, Any]] = {}
        for category, received, taken, dispatched, resolved in rows:
            b = by.setdefault(
                category,
                {
                    "count": 0,
                    "taken": 0,
                    "within_target": 0,
                    "take_s": [],
                    "dispatch_s": [],
                    "resolve_s": [],
                },  # fmt: skip
            )
            b["count"] += 1
            if taken is not None:
                b["taken"] += 1
                b["take_s"].append((taken - received) / 1000)
                if taken - received <= target_s * 1000:
                    b["within_target"] += 1
            if dispatched is not None:
                b["dispatch_s"].append((dispatched - received) / 1000)
            if resolved is not None:
                b["resolve_s"].append((resolved - received) / 1000)
        for b in by.values():
            for key in ("take_s", "dispatch_s", "resolve_s"):
                values = sorted(b.pop(key))
                b[key.replace("_s", "_median_s")] = values[len(values) // 2] if values else None
            b["share_within_target"] = b["within_target"] / b["count"] if b["count"] else None
        return {"since_ms": since_ms, "until_ms": until_ms, "target_s": target_s, "by": by}

    def audit(
        self,
        actor: str,
        action: str,
        incident_id: int | None = None,
        site: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self.transaction() as cur:
            cur.audit(actor, action, incident_id, site, detail or {})

    def audit_log(self, limit: int = 200, incident_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, time_ms, actor, action, incident_id, site, detail_json FROM audit"
        args: list[Any] = []
        if incident_id is not None:
            sql += " WHERE incident_id = ?"
            args.append(incident_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.transaction() as cur:
            cur.execute(sql, args)
            keys = ("id", "time_ms", "actor", "action", "incident_id", "site", "detail")
            rows = [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["detail"] = _loads(row["detail"])
        return rows

    # --- console accounts ------------------------------------------------------------------
    def add_user(self, username: str, password_hash: str, role: str, display_name: str) -> None:
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}")
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO users (username, password_hash, role, display_name, created_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET"
                " password_hash = excluded.password_hash, role = excluded.role,"
                " display_name = excluded.display_name, disabled = 0",
                (username, password_hash, role, display_name, _now()),
            )
            cur.audit("admin", "user_set", None, None, {"username": username, "role": role})

    def user(self, username: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            cur.execute(
                "SELECT username, password_hash, role, display_name, disabled FROM users"
                " WHERE username = ?",
                (username,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        keys = ("username", "password_hash", "role", "display_name", "disabled")
        out = dict(zip(keys, row, strict=True))
        out["disabled"] = bool(out["disabled"])
        return out

    def users(self) -> list[dict[str, Any]]:
        """Console accounts without their hashes: the supervisors' users page."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT username, role, display_name, created_ms, disabled FROM users"
                " ORDER BY username"
            )
            keys = ("username", "role", "display_name", "created_ms", "disabled")
            rows = [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["disabled"] = bool(row["disabled"])
        return rows

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Rehash on login when the hashing parameters changed (argon2's check_needs_rehash)."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
            )


class _Cursor:
    """A DB-API cursor that speaks the dialect: `?` placeholders, inserts returning their id."""

    def __init__(self, cur: Any, dialect: _Dialect) -> None:
        self._cur = cur
        self._dialect = dialect

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cur.execute(self._dialect.sql(sql), tuple(args))

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def insert_returning_id(self, sql: str, args: Sequence[Any]) -> int:
        self.execute(sql + " RETURNING id", args)
        return int(self._cur.fetchone()[0])

    def audit(
        self,
        actor: str,
        action: str,
        incident_id: int | None,
        site: str | None,
        detail: dict[str, Any],
    ) -> None:
        self.execute(
            "INSERT INTO audit (time_ms, actor, action, incident_id, site, detail_json)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), actor, action, incident_id, site, json.dumps(detail, default=str)),
        )


def _summary(event: Event) -> str:
    if event.kind is Kind.FAULT:
        code = str(event.data.get("code") or "unknown")
        return f"fault: {describe_fault(code)}"
    cause = event.data.get("cause")
    if event.kind is Kind.SMOKE:
        return "camera smoke" + (" (test)" if is_test(event) else "")
    if cause == "test":
        return "test alarm"
    return f"{cause or 'alarm'}" + (" (test)" if is_test(event) else "")


def _join_note(old: str | None, actor: str, note: str) -> str | None:
    if not note:
        return old
    line = f"{actor}: {note.strip()[:2000]}"
    return f"{old}\n{line}" if old else line


def _incident_row(row: Sequence[Any]) -> dict[str, Any]:
    keys = (
        "id", "site", "category", "priority", "status", "source", "summary", "event_count",
        "first_event", "received_ms", "last_ms", "owner", "taken_ms", "held_until_ms",
        "dispatched_ms", "resolved_ms", "escalated_ms", "cleared_ms", "outcome", "note",
        "revision",
    )  # fmt: skip
    out = dict(zip(keys, row, strict=True))
    out["test"] = out["category"] == "test"
    return out


def _gateway_row(r: Sequence[Any]) -> dict[str, Any]:
    state = _loads(r[7]) or {}
    return {
        "site": r[0],
        "district": r[1],
        "ward": r[2],
        "gateway": r[3],
        "online": None if r[4] is None else bool(r[4]),
        "last_seen_ms": r[5],
        "silent": bool(r[6]),
        "state": state,
        "tele": _loads(r[8]),
        "tele_ms": r[9],
        "labels": _loads(r[10]) or {},
        "name": r[11],
        "address": r[12],
        "latitude": r[13],
        "longitude": r[14],
        "contact_name": r[15],
        "contact_phone": r[16],
    }


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)
