"""The durable outbox: an event is accepted only once committed here, and leaves only on PUBACK.

SQLite in WAL mode. With fsync="critical" (the default) each alarm or fault is fsynced before it
is accepted, so it survives a power cut; other events ride along with the next fsync (a crash of
the process loses none of them, a power cut may lose the last fraction of a second of telemetry).
fsync="full" fsyncs every event (about 2 ms each on an SD card class disk), "normal" none.
Rows are sent lane by lane (alarms and faults first), in insertion order within a lane. The
outbox is bounded: when full, telemetry goes first, then the oldest ordinary events; the critical
lane is never evicted. If the disk itself is full, critical events are still accepted: first by
evicting lower lanes to free pages, and as a last resort into a memory spill that is flushed to
disk as soon as it can be (and sent from memory meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.events import Event, Lane, now_ms

log = logging.getLogger("wardgate.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    expiry_s INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


Statement = tuple[str, tuple]  # SQL and its parameters


@dataclass(frozen=True, slots=True)
class Row:
    id: int  # negative for rows held in the memory spill
    lane: int
    topic: str
    payload: bytes
    created_ms: int
    expiry_s: int | None


class OutboxError(RuntimeError):
    """The outbox cannot accept an event (and says why and what to do)."""


class Outbox:
    def __init__(
        self,
        path: Path | str,
        max_events: int = 200_000,
        fsync: str = "critical",
        max_page_count: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self.fsync = fsync
            self._sync_full: bool | None = None
            if max_page_count:  # lets tests (and tiny SD cards) bound the file
                self._db.execute(f"PRAGMA max_page_count={int(max_page_count)}")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(
                f"{self.path}: cannot open the outbox database ({exc}); check that the directory "
                "is writable and the file is not corrupt (move it aside to start empty)"
            ) from None
        self._lock = threading.RLock()
        self._counts = {lane: 0 for lane in Lane}
        for lane, count in self._db.execute("SELECT lane, count(*) FROM outbox GROUP BY lane"):
            self._counts[Lane(lane)] = count
        self._counters = dict(self._db.execute("SELECT name, value FROM counters"))
        self._spill: list[Row] = []
        self._spill_next_id = -1
        self._warned_over_bound = False

    # --- counters --------------------------------------------------------------------------
    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def _bump(self, name: str, by: int = 1) -> int:
        value = self._counters.get(name, 0) + by
        self._counters[name] = value
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
        return value

    @property
    def evictions(self) -> dict[str, int]:
        return {lane.name.lower(): self.counter(f"evicted_{lane.name.lower()}") for lane in Lane}

    def depth(self) -> dict[str, int]:
        with self._lock:
            out = {lane.name.lower(): count for lane, count in self._counts.items()}
            if self._spill:
                out["memory_spill"] = len(self._spill)
            return out

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values()) + len(self._spill)

    # --- accepting -------------------------------------------------------------------------
    def put(
        self,
        event: Event,
        topic: str,
        fmt: str = "cbor",
        expiry_s: int | None = None,
        also: Sequence[Statement] = (),
    ) -> Event:
        """Commit one event; returns it with its lane sequence number, as it will be sent.

        `also`: SQL statements committed atomically with the event, in the same fsync (e.g. the
        alarm-acknowledgement tracking row). Raises OutboxError only for a non-critical event
        that cannot be stored (disk full and nothing to evict); a critical event is always
        accepted.
        """
        lane = event.lane
        if lane is Lane.CRITICAL:
            expiry_s = None  # alarms and faults never expire
        with self._lock:
            self._flush_spill()
            seq = self.counter(f"seq_{lane.name.lower()}") + 1
            event = event.with_(seq=seq)
            payload = event.encode(fmt)
            try:
                self._insert(lane, topic, payload, event.time_ms, expiry_s, also)
            except _Rejected:
                self._db.execute("BEGIN IMMEDIATE")
                self._bump(f"evicted_{lane.name.lower()}")
                self._db.execute("COMMIT")
                raise OutboxError(
                    f"{self.path}: outbox full of alarms and faults ({self.max_events}); "
                    f"{event.kind} event dropped"
                ) from None
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                self._on_disk_full(lane, topic, payload, event.time_ms, expiry_s, seq, also, exc)
            return event

    def _set_sync(self, lane: Lane) -> None:
        full = self.fsync == "full" or (self.fsync == "critical" and lane is Lane.CRITICAL)
        if full != self._sync_full:  # must be set outside a transaction
            self._db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def _insert(
        self,
        lane: Lane,
        topic: str,
        payload: bytes,
        created: int,
        expiry: int | None,
        also: Sequence[Statement] = (),
    ) -> None:
        self._set_sync(lane)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if sum(self._counts.values()) >= self.max_events:
                self._evict_for(lane)
            self._db.execute(
                "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s) "
                "VALUES (?, ?, ?, ?, ?)",
                (int(lane), topic, payload, created, expiry),
            )
            self._bump(f"seq_{lane.name.lower()}")
            for sql, params in also:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._counts[lane] += 1

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        # counters written in the failed transaction are re-read from disk
        self._counters = dict(self._db.execute("SELECT name, value FROM counters"))
        self._counts = {lane: 0 for lane in Lane}
        for lane, count in self._db.execute("SELECT lane, count(*) FROM outbox GROUP BY lane"):
            self._counts[Lane(lane)] = count

    def _evict_for(self, incoming: Lane, rows: int = 1) -> None:
        """Make room inside the current transaction: bulk first, then ordinary, never critical."""
        for victim in (Lane.BULK, Lane.EVENTS):
            if victim is Lane.CRITICAL or self._counts[victim] == 0:
                continue
            if victim < incoming:
                break  # never evict a more important lane for a less important event
            deleted = self._db.execute(
                "DELETE FROM outbox WHERE id IN "
                "(SELECT id FROM outbox WHERE lane = ? ORDER BY id LIMIT ?)",
                (int(victim), rows),
            ).rowcount
            self._counts[victim] -= deleted
            self._bump(f"evicted_{victim.name.lower()}", deleted)
            return
        if incoming is Lane.CRITICAL:
            if not self._warned_over_bound:
                log.warning(
                    "outbox holds %d critical events, its bound; accepting more alarms anyway",
                    self._counts[Lane.CRITICAL],
                )
                self._warned_over_bound = True
            return
        raise _Rejected

    def _on_disk_full(
        self,
        lane: Lane,
        topic: str,
        payload: bytes,
        created: int,
        expiry: int | None,
        seq: int,
        also: Sequence[Statement],
        exc: Exception,
    ) -> None:
        log.error("%s: disk full (%s); evicting low-priority events", self.path, exc)
        freed = 0
        for victim in (Lane.BULK, Lane.EVENTS):
            if victim < lane or self._counts[victim] == 0:
                continue
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("BEGIN IMMEDIATE")
                n = self._db.execute(
                    "DELETE FROM outbox WHERE id IN "
                    "(SELECT id FROM outbox WHERE lane = ? ORDER BY id LIMIT 256)",
                    (int(victim),),
                ).rowcount
                self._bump(f"evicted_{victim.name.lower()}", n)
                self._db.execute("COMMIT")
                self._counts[victim] -= n
                freed += n
            if freed:
                break
        if freed:
            try:
                self._insert(lane, topic, payload, created, expiry, also)
                return
            except sqlite3.OperationalError as again:
                if not _is_disk_full(again):
                    raise
        if lane is not Lane.CRITICAL:
            raise OutboxError(
                f"{self.path}: disk full, event dropped; free space on {self.path.parent}"
            ) from None
        log.critical(
            "%s: disk full; holding alarm in memory until it is sent or the disk has room "
            "(free space on %s)",
            self.path,
            self.path.parent,
        )
        self._counters[f"seq_{lane.name.lower()}"] = seq
        self._spill.append(
            Row(self._spill_next_id, int(lane), topic, payload, created, None),
        )
        self._spill_next_id -= 1

    def _flush_spill(self) -> None:
        while self._spill:
            row = self._spill[0]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    (row.lane, row.topic, row.payload, row.created_ms),
                )
                self._bump(f"seq_{Lane(row.lane).name.lower()}", 0)
                self._db.execute("COMMIT")
            except sqlite3.OperationalError:
                self._rollback()
                return
            self._spill.pop(0)
            self._counts[Lane(row.lane)] += 1
            log.warning("%s: disk has room again; spilled alarm committed", self.path)

    # --- sending ---------------------------------------------------------------------------
    def pending(
        self, lane: Lane, after_id: int, limit: int, spill_sent: Container[int] = ()
    ) -> list[Row]:
        """Rows of one lane with id > after_id, oldest first; unsent memory-spill rows first."""
        with self._lock:
            rows: list[Row] = []
            if lane is Lane.CRITICAL and self._spill:
                rows = [r for r in self._spill if r.id not in spill_sent][:limit]
            cur = self._db.execute(
                "SELECT id, lane, topic, payload, created_ms, expiry_s FROM outbox "
                "WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                (int(lane), max(after_id, 0), limit - len(rows)),
            )
            rows.extend(Row(*r) for r in cur)
            return rows

    def delete(self, ids: Iterable[int], reason: str = "acked") -> int:
        """Remove rows (on PUBACK, or expired). Spill rows have negative ids."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            spill_ids = {i for i in ids if i < 0}
            if spill_ids:
                self._spill = [r for r in self._spill if r.id not in spill_ids]
            disk_ids = [i for i in ids if i > 0]
            removed = len(spill_ids)
            if not disk_ids:
                return removed
            self._set_sync(Lane.BULK)  # a delete lost to a power cut is a duplicate, not a loss
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for start in range(0, len(disk_ids), 500):
                    chunk = disk_ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    per_lane = self._db.execute(
                        f"SELECT lane, count(*) FROM outbox WHERE id IN ({marks}) GROUP BY lane",
                        chunk,
                    ).fetchall()
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    for lane, n in per_lane:
                        self._counts[Lane(lane)] -= n
                        removed += n
                if reason != "acked":
                    self._bump(reason, len(disk_ids))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()  # rows stay and are sent again: a duplicate, not a loss
                raise
            return removed

    def sql(self, statement: str, params: tuple = (), script: bool = False) -> list[tuple]:
        """Run a statement on the outbox's own connection, under its lock (autocommit).

        Side tables that must commit atomically with events (the alarm-acknowledgement rows)
        live here: a second connection would contend for SQLite's write lock, whose busy
        handler sleeps 1-100 ms, and those sleeps showed up as alarm latency."""
        with self._lock:
            self._set_sync(Lane.BULK)  # side-table writes need no fsync of their own
            if script:
                self._db.executescript(statement)
                return []
            return self._db.execute(statement, params).fetchall()

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


class _Rejected(Exception):
    pass


def _is_disk_full(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "full" in text or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def expired(row: Row, now: int | None = None) -> bool:
    if not row.expiry_s:
        return False
    return (now if now is not None else now_ms()) - row.created_ms > row.expiry_s * 1000


def remaining_expiry_s(row: Row) -> int | None:
    if not row.expiry_s:
        return None
    return max(1, row.expiry_s - (now_ms() - row.created_ms) // 1000)
