"""The durable outbox: an event is accepted only once committed here, and leaves only on PUBACK.

SQLite in WAL mode. With fsync="critical" (the default) each alarm or fault is fsynced before it
is accepted, so it survives a power cut; other events ride along with the next fsync (a crash of
the process loses none of them, a power cut may lose the last fraction of a second of telemetry).
fsync="full" fsyncs every event (about 2 ms each on an SD card class disk), "normal" none.
Rows are sent lane by lane (alarms and faults first), in insertion order within a lane. The
outbox is bounded: when full, telemetry goes first, then the oldest ordinary events; the critical
lane is never evicted.

Disk budget. The outbox stays within `disk_budget` bytes (database + WAL + reserve) and keeps a
*reserve*: a preallocated file next to the database (`<db>.reserve`) that exists only to be given
back to the filesystem when it is full. On a full filesystem (or a full budget) every write that
fails with SQLITE_FULL makes room, in this order: evict a batch of lower-lane rows, release the
reserve, checkpoint and truncate the WAL; then it is retried. While under pressure (budget
reached, reserve released, or less free space than the reserve) every insert first evicts a
lower-lane row, so the database stops growing and the space it owns is reused. Deleting
acknowledged rows works on a full filesystem for the same reason. The WAL is bounded
(`wal_autocheckpoint`, `journal_size_limit`, both derived from the reserve). The reserve is taken
back as soon as the filesystem has room for it again.

Only if all of that fails (the filesystem is full and the outbox holds nothing but alarms) is an
alarm held in a memory spill. The spill keeps its order and its seq numbers (the lane's counter
counts spilled alarms and is persisted with them), is committed to disk as soon as a write
succeeds again (checked at least once a second), and on close() is committed after evicting
whatever it can; what still cannot be written is logged at CRITICAL, one line per alarm with its
payload, never dropped silently. Logging is per state change plus a summary a minute.

Expiry is measured on CLOCK_BOOTTIME within the boot that stored a row (each row keeps the boot
number and its boottime ms), so a wall-clock step expires nothing early and keeps nothing
forever; rows from an earlier boot are aged by wall clock, clamped at zero.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.clock import boot_id, mono_ms
from protocol.events import Event, Lane, now_ms

log = logging.getLogger("wardgate.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    expiry_s INTEGER,
    boot INTEGER,
    mono_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# columns added after v0.1.0: an outbox file from that release gains them on open
MIGRATIONS = (("boot", "INTEGER"), ("mono_ms", "INTEGER"))

DEFAULT_DISK_BUDGET_MB = 512
DEFAULT_RESERVE_KB = 8192
EVICT_BATCH = 256  # rows evicted at once when a write fails for lack of space
DELETE_CHUNK_FULL = 16  # rows deleted per transaction when a bigger delete did not fit
FREE_CHECK_EVERY = 32  # inserts between two looks at the free space (statvfs, ~1 us)
TICK_S = 1.0  # housekeeping (spill flush, reserve, free-space check) at most this often
SUMMARY_S = 60.0  # while under disk pressure, one summary log line this often

Statement = tuple[str, tuple]  # SQL and its parameters
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Row:
    id: int  # negative for rows held in the memory spill
    lane: int
    topic: str
    payload: bytes
    created_ms: int  # wall clock: the event's timestamp, and the age of rows from another boot
    expiry_s: int | None
    mono_ms: int | None = None  # CLOCK_BOOTTIME when stored, if stored during this boot


class OutboxError(RuntimeError):
    """The outbox cannot accept an event (and says why and what to do)."""


class Outbox:
    def __init__(
        self,
        path: Path | str,
        max_events: int = 1_000_000,
        fsync: str = "critical",
        disk_budget_mb: float = DEFAULT_DISK_BUDGET_MB,
        reserve_kb: int = DEFAULT_RESERVE_KB,
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.fsync = fsync
        self._sync_full: bool | None = None
        self._lock = threading.RLock()
        self._counts = {lane: 0 for lane in Lane}
        self._counters: dict[str, int] = {}
        self._spill: list[tuple[Row, tuple[Statement, ...]]] = []
        self._spill_next_id = -1
        self._warned_over_bound = False
        # disk-pressure state (logged per change) and what happened since the last summary
        self._pressure = False
        self._state = "ok"
        self._since = {"evicted": 0, "refused": 0, "spilled": 0, "write_failures": 0}
        self._next_tick = 0.0
        self._next_summary = 0.0
        self._retry_spill = False
        self._puts = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._reserve = _Reserve(
                self.path.with_name(self.path.name + ".reserve"), 0
            )  # sized below, once the page size is known
            self._db.execute("PRAGMA journal_mode=WAL")
            self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._configure(int(disk_budget_mb * 1024 * 1024), int(reserve_kb) * 1024)
            self._write_retrying(self._migrate, Lane.CRITICAL)
            self._boot = self._write_retrying(self._register_boot, Lane.CRITICAL)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(
                f"{self.path}: cannot open the outbox database ({exc}); check that the directory "
                "is writable, has free space, and the file is not corrupt (move it aside to "
                "start empty)"
            ) from None
        for lane, count in self._db.execute("SELECT lane, count(*) FROM outbox GROUP BY lane"):
            self._counts[Lane(lane)] = count
        self._counters = dict(self._db.execute("SELECT name, value FROM counters"))
        if not self._reserve.acquire():
            self._enter_pressure("no room for the disk reserve")

    def _configure(self, budget: int, reserve: int) -> None:
        """Size the reserve, the WAL bound and the database bound from the budget."""
        page = self._page
        try:
            st = os.statvfs(self.path.parent)
            fs_size = st.f_blocks * st.f_frsize
        except OSError:
            fs_size = budget
        # the reserve: as configured, but at most an eighth of the budget and of the filesystem
        reserve = max(16 * page, min(reserve, budget // 8, fs_size // 8)) // page * page
        self._reserve.size = reserve
        # the WAL restarts after each checkpoint; one checkpoint's worth fits in half the reserve
        wal_pages = max(16, min(1000, reserve // page // 2))
        self.wal_limit = wal_pages * page
        self._db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        self._db.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
        self.max_pages = max(64, (budget - reserve - self.wal_limit) // page)
        self._db.execute(f"PRAGMA max_page_count={self.max_pages}")
        self.disk_budget = budget

    def _migrate(self) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in MIGRATIONS:
            if column not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")

    def _register_boot(self) -> int:
        """This boot's number in this file: rows stored in it are aged on CLOCK_BOOTTIME."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'boot_id'").fetchone()
        number = self._db.execute("SELECT value FROM counters WHERE name = 'boot'").fetchone()
        n = int(number[0]) if number else 0
        if row is None or row[0] != boot_id() or number is None:
            n += 1
            self._db.execute(
                "INSERT INTO meta(name, value) VALUES ('boot_id', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (boot_id(),),
            )
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES ('boot', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (n,),
            )
        return n

    # --- counters --------------------------------------------------------------------------
    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def _set_counter(self, name: str, value: int) -> None:
        """Inside a transaction (whose failure restores the in-memory copy)."""
        self._counters[name] = value
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _bump(self, name: str, by: int = 1) -> int:
        value = self._counters.get(name, 0) + by
        self._set_counter(name, value)
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

    def disk_state(self) -> dict[str, object]:
        """For status replies: pressure, reserve held, rows in RAM."""
        with self._lock:
            return {
                "state": self._state,
                "reserve_held": self._reserve.held,
                "memory_spill": len(self._spill),
            }

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values()) + len(self._spill)

    # --- transactions ----------------------------------------------------------------------
    def _set_sync(self, lane: Lane) -> None:
        full = self.fsync == "full" or (self.fsync == "critical" and lane is Lane.CRITICAL)
        if full != self._sync_full:  # must be set outside a transaction
            self._db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def _txn(self, body: Callable[[], T], sync: Lane) -> T:
        """One write transaction; on failure the in-memory counts and counters are restored."""
        self._set_sync(sync)
        counts, counters = dict(self._counts), dict(self._counters)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._counts, self._counters = counts, counters
            raise
        return result

    def _write_retrying(
        self, body: Callable[[], T], lane: Lane, attempts: int = 4, evict: bool = True
    ) -> T:
        """A transaction that, on a full disk, makes room (evicting below `lane`) and retries."""
        for attempt in range(attempts):
            try:
                return self._txn(body, lane)
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc) or attempt == attempts - 1:
                    raise
                self._since["write_failures"] += 1
                if not self._make_room(lane, evict) and attempt > 0:
                    raise
        raise AssertionError("unreachable")

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
        that cannot be stored (outbox full of alarms, or disk full and nothing to evict); a
        critical event is always accepted (on disk, or if the filesystem is full and holds
        nothing to evict, in the memory spill until it can be written).
        """
        lane = event.lane
        if lane is Lane.CRITICAL:
            expiry_s = None  # alarms and faults never expire
        with self._lock:
            self._tick()
            self._puts += 1
            if (
                not self._pressure
                and self._puts % FREE_CHECK_EVERY == 0
                and self._fs_free() < self._reserve.size
            ):
                self._enter_pressure("low free space")
            name = f"seq_{lane.name.lower()}"
            event = event.with_(seq=self.counter(name) + 1)
            payload = event.encode(fmt)
            stamp = mono_ms()
            row = (int(lane), topic, payload, event.time_ms, expiry_s, self._boot, stamp)
            if self._spill:  # alarms wait in RAM: they go to disk first, in order
                self._flush_spill()
                if self._spill:
                    if lane is not Lane.CRITICAL:
                        self._refuse(lane)
                        raise OutboxError(
                            f"{self.path}: disk full, alarms waiting for space; {event.kind} "
                            f"event dropped; free space on {self.path.parent}"
                        )
                    self._to_spill(row, event.seq, tuple(also))
                    return event

            def insert() -> None:
                if self._pressure or sum(self._counts.values()) >= self.max_events:
                    self._evict_for(lane, required=not self._pressure)
                self._db.execute(
                    "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s, boot, mono_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                self._set_counter(name, event.seq)
                for sql, params in also:
                    self._db.execute(sql, params)
                self._counts[lane] += 1

            try:
                self._write_retrying(insert, lane)
            except _Rejected:
                self._txn(lambda: self._bump(f"evicted_{lane.name.lower()}"), Lane.BULK)
                raise OutboxError(
                    f"{self.path}: outbox full of alarms and faults ({self.max_events}); "
                    f"{event.kind} event dropped"
                ) from None
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                if lane is not Lane.CRITICAL:
                    self._refuse(lane)
                    raise OutboxError(
                        f"{self.path}: disk full, {event.kind} event dropped; free space on "
                        f"{self.path.parent}"
                    ) from None
                self._to_spill(row, event.seq, tuple(also))
            return event

    def _evict_for(self, incoming: Lane, rows: int = 1, required: bool = True) -> int:
        """Make room inside the current transaction: bulk first, then ordinary, never critical.

        `required`: the outbox is at its row bound, so a non-critical event with nothing below
        it to evict is rejected. Otherwise (disk pressure) eviction is best effort."""
        for victim in (Lane.BULK, Lane.EVENTS):
            if self._counts[victim] == 0:
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
            self._since["evicted"] += deleted
            return deleted
        if not required:
            return 0
        if incoming is Lane.CRITICAL:
            if not self._warned_over_bound:
                log.warning(
                    "outbox holds %d critical events, its bound; accepting more alarms anyway",
                    self._counts[Lane.CRITICAL],
                )
                self._warned_over_bound = True
            return 0
        raise _Rejected

    def _refuse(self, lane: Lane) -> None:
        self._since["refused"] += 1
        with contextlib.suppress(sqlite3.Error):  # a counter that cannot be written is no loss
            self._txn(lambda: self._bump(f"evicted_{lane.name.lower()}"), Lane.BULK)

    # --- disk pressure ---------------------------------------------------------------------
    def _make_room(self, lane: Lane, evict: bool = True) -> bool:
        """After SQLITE_FULL: restart the WAL, evict a batch below `lane` (if `evict`), and if
        that cannot run, release the reserve and try again. Returns whether a retry can succeed."""
        self._enter_pressure("disk full" if self._fs_free() < self._reserve.size else "budget")
        self._next_tick = 0.0  # look at the free space again at the next call
        restarted = self._checkpoint()
        if evict and self._evict_batch(lane):
            return True
        if lane is Lane.CRITICAL and self._fs_free() > self._reserve.size + 64 * self._page:
            # the budget is full of alarms but the filesystem has room: alarms go past it
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            if pages >= self.max_pages - 1:
                self.max_pages = pages + 64
                self._db.execute(f"PRAGMA max_page_count={self.max_pages}")
                self._set_state("over budget", logging.ERROR)
                return True
        if not evict:  # deleting delivered rows: may use the whole reserve
            depth = _Reserve.DELETE
        else:
            depth = _Reserve.ALARM if lane is Lane.CRITICAL else _Reserve.ANY
        if self._reserve.release(depth):
            self._set_state("reserve released", logging.ERROR)
            self._checkpoint()
            if evict:
                self._evict_batch(lane)
            return True
        return restarted

    def _evict_batch(self, lane: Lane) -> bool:
        """Evict lower-lane rows in their own transaction, fewer at a time if the WAL is full."""
        for rows in (EVICT_BATCH, 16, 1):
            try:
                return self._txn(lambda n=rows: self._evict_for(lane, n, False) > 0, Lane.BULK)
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                self._checkpoint()
        return False

    def _checkpoint(self, mode: str = "RESTART") -> bool:
        """Copy the WAL into the database; RESTART lets the next write reuse the WAL file from
        its start (its space stays ours), TRUNCATE gives it back. False if incomplete."""
        try:
            busy, _, _ = self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return False
        return busy == 0

    def _fs_free(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    def _enter_pressure(self, why: str) -> None:
        if not self._pressure:
            self._pressure = True
            self._next_summary = time.monotonic() + SUMMARY_S
            self._set_state("pressure", logging.WARNING, why)

    def _set_state(self, state: str, level: int, why: str = "") -> None:
        if state == self._state:
            return
        self._state = state
        messages = {
            "ok": "disk has room again; outbox back to normal",
            "pressure": "disk pressure (%s): every new event now evicts an older, less important "
            "one first",
            "reserve released": "filesystem full: disk reserve released so that eviction and "
            "checkpoints can run; free space on the outbox's filesystem",
            "over budget": "the disk budget is full of alarms and faults: accepting more past "
            "it while the filesystem has room",
            "spilling": "filesystem full and nothing left to evict: alarms are held in memory "
            "until the disk has room (free space now)",
        }
        msg = messages[state]
        log.log(level, "%s: " + msg, self.path, *((why,) if "%s" in msg else ()))

    def _tick(self) -> None:
        """Housekeeping at most once a second (under the lock): flush the spill, take the
        reserve back, leave pressure when there is room, log a summary while under it."""
        now = time.monotonic()
        if now < self._next_tick and not self._retry_spill:
            return
        self._next_tick = now + TICK_S
        if self._spill:
            self._flush_spill()
        free = self._fs_free()
        if not self._reserve.held and free >= 2 * self._reserve.size:
            self._reserve.acquire()
        if self._pressure:
            used = self._db.execute("PRAGMA page_count").fetchone()[0]
            used -= self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if (
                self._reserve.held
                and not self._spill
                and free >= self._reserve.size
                and used < self.max_pages * 0.9
            ):
                self._pressure = False
                self._set_state("ok", logging.WARNING)
            elif now >= self._next_summary:
                self._next_summary = now + SUMMARY_S
                log.warning(
                    "%s: still under disk pressure (%s): in the last %.0f s %d events evicted, "
                    "%d refused, %d alarms spilled to memory, %d writes retried; %d alarms in "
                    "memory now, %d bytes free",
                    self.path,
                    self._state,
                    SUMMARY_S,
                    self._since["evicted"],
                    self._since["refused"],
                    self._since["spilled"],
                    self._since["write_failures"],
                    len(self._spill),
                    free,
                )
                self._since = dict.fromkeys(self._since, 0)
        elif free < self._reserve.size:
            self._enter_pressure("low free space")

    def _to_spill(self, row: tuple, seq: int, also: tuple[Statement, ...]) -> None:
        lane, topic, payload, created, _expiry, _boot, stamp = row
        self._counters[f"seq_{Lane(lane).name.lower()}"] = seq  # persisted with the spill
        self._spill.append(
            (Row(self._spill_next_id, lane, topic, payload, created, None, stamp), also)
        )
        self._spill_next_id -= 1
        self._since["spilled"] += 1
        self._enter_pressure("disk full")
        self._set_state("spilling", logging.CRITICAL)

    def _flush_spill(self, attempts: int = 2) -> None:
        """Commit every spilled alarm (all or none, in order) with the lanes' seq counters."""
        self._retry_spill = False
        spill = list(self._spill)

        def write() -> None:
            for row, also in spill:
                self._db.execute(
                    "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s, boot, mono_ms)"
                    " VALUES (?, ?, ?, ?, NULL, ?, ?)",
                    (row.lane, row.topic, row.payload, row.created_ms, self._boot, row.mono_ms),
                )
                for sql, params in also:
                    self._db.execute(sql, params)
                self._counts[Lane(row.lane)] += 1
            for name, value in list(self._counters.items()):
                if name.startswith("seq_"):
                    self._set_counter(name, value)

        try:  # a failure restores the in-memory counters: the spilled seqs stay counted
            self._write_retrying(write, Lane.CRITICAL, attempts)
        except sqlite3.OperationalError as exc:
            if not _is_disk_full(exc):
                raise
            return
        del self._spill[: len(spill)]
        log.warning("%s: disk has room again; %d spilled alarm(s) committed", self.path, len(spill))
        if self._state == "spilling":
            self._set_state("pressure", logging.WARNING, "alarms back on disk")

    # --- sending ---------------------------------------------------------------------------
    def pending(
        self, lane: Lane, after_id: int, limit: int, spill_sent: Container[int] = ()
    ) -> list[Row]:
        """Rows of one lane with id > after_id, oldest first; then unsent memory-spill rows
        (alarms spilled are newer than every alarm on disk)."""
        with self._lock:
            if self._pressure or self._spill:
                self._tick()
            boot = self._boot
            rows = [
                Row(i, ln, t, p, c, e, m if b == boot else None)
                for i, ln, t, p, c, e, b, m in self._db.execute(
                    "SELECT id, lane, topic, payload, created_ms, expiry_s, boot, mono_ms "
                    "FROM outbox WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                    (int(lane), max(after_id, 0), limit),
                )
            ]
            if lane is Lane.CRITICAL and self._spill and len(rows) < limit:
                rows.extend(
                    [r for r, _ in self._spill if r.id not in spill_sent][: limit - len(rows)]
                )
            return rows

    def delete(self, ids: Iterable[int], reason: str = "acked") -> int:
        """Remove rows (on PUBACK, or expired). Spill rows have negative ids.

        Works on a full filesystem: if the WAL cannot grow, the reserve is released first."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            spill_ids = {i for i in ids if i < 0}
            if spill_ids:
                self._spill = [(r, a) for r, a in self._spill if r.id not in spill_ids]
            disk_ids = [i for i in ids if i > 0]
            if not disk_ids:
                return len(spill_ids)

            def remove() -> int:
                removed = 0
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
                return removed

            # a delete lost to a power cut is a duplicate, not a loss: no fsync of its own.
            # On failure the rows stay and are sent again: a duplicate, not a loss.
            try:
                removed = self._write_retrying(remove, Lane.BULK, 2, evict=False)
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc) or len(disk_ids) <= DELETE_CHUNK_FULL:
                    raise
                # the WAL holds only a few pages: delete in small transactions
                removed, everything = 0, disk_ids
                for start in range(0, len(everything), DELETE_CHUNK_FULL):
                    disk_ids = everything[start : start + DELETE_CHUNK_FULL]
                    removed += self._write_retrying(remove, Lane.BULK, 3, evict=False)
            removed += len(spill_ids)
            if self._spill:
                self._retry_spill = True  # space was freed: try the spill at the next call
            return removed

    def sql(self, statement: str, params: tuple = (), script: bool = False) -> list[tuple]:
        """Run a statement on the outbox's own connection, under its lock (autocommit).

        Side tables that must commit atomically with events (the alarm-acknowledgement rows)
        live here: a second connection would contend for SQLite's write lock, whose busy
        handler sleeps 1-100 ms, and those sleeps showed up as alarm latency."""
        with self._lock:
            self._set_sync(Lane.BULK)  # side-table writes need no fsync of their own
            for attempt in range(2):
                try:
                    if script:
                        self._db.executescript(statement)
                        return []
                    return self._db.execute(statement, params).fetchall()
                except sqlite3.OperationalError as exc:
                    if attempt or not _is_disk_full(exc):
                        raise
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    self._make_room(Lane.CRITICAL)
            raise AssertionError("unreachable")

    def close(self) -> None:
        """Commit the memory spill (evicting and releasing the reserve as needed) and close.

        An alarm that still cannot be written is logged at CRITICAL with its payload."""
        with self._lock:
            if self._spill:
                self._flush_spill(attempts=8)
            if self._spill:
                log.critical(
                    "%s: closing with %d accepted alarm(s) that could not be written (filesystem "
                    "full, nothing left to evict); they are NOT stored. Their payloads follow.",
                    self.path,
                    len(self._spill),
                )
                for row, _ in self._spill:
                    log.critical("unsaved alarm: topic=%s payload=%s", row.topic, row.payload.hex())
            self._checkpoint("TRUNCATE")
            self._db.close()


class _Rejected(Exception):
    pass


class _Reserve:
    """A preallocated file given back to the filesystem when it is full, in three steps: the
    first half for any write that needs room (eviction, checkpoints), the next quarter only for
    alarms, the last quarter only for deleting delivered rows (which frees room for alarms)."""

    ANY, ALARM, DELETE = 1, 2, 3  # how deep a write may dig
    KEPT = {3: 1.0, 2: 0.5, 1: 0.25, 0: 0.0}  # level -> the part of `size` still held

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.level = 0

    @property
    def held(self) -> bool:
        return self.level == 3

    def _bytes(self, level: int) -> int:
        return int(self.size * self.KEPT[level])

    def acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            have = os.fstat(fd).st_size
            if self.level == 0:  # what an earlier run left is still ours
                self.level = max(lv for lv in self.KEPT if self._bytes(lv) <= have)
            if have < self.size:
                os.posix_fallocate(fd, 0, self.size)
            self.level = 3
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("%s: cannot allocate the disk reserve: %s", self.path, exc)
            with contextlib.suppress(OSError):  # keep what was held before
                os.ftruncate(fd, self._bytes(self.level))
        finally:
            os.close(fd)
        return self.held

    def release(self, depth: int) -> bool:
        """Give back one step, if a write of this `depth` may: False if nothing was freed."""
        if self.level == 0 or 3 - self.level >= depth:
            return False
        self.level -= 1
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return True
        try:
            os.ftruncate(fd, self._bytes(self.level))
            os.fsync(fd)  # ext4 reuses freed blocks only after its journal commits
        except OSError:
            pass
        finally:
            os.close(fd)
        return True


def _is_disk_full(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "full" in text or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _age_ms(row: Row, now: int | None = None) -> int:
    """On CLOCK_BOOTTIME if the row was stored during this boot; else by wall clock, >= 0."""
    if row.mono_ms is not None and now is None:
        return max(0, mono_ms() - row.mono_ms)
    return max(0, (now if now is not None else now_ms()) - row.created_ms)


def expired(row: Row, now: int | None = None) -> bool:
    """`now`: a wall-clock ms to age by instead (the row's boottime stamp is then ignored)."""
    if not row.expiry_s:
        return False
    return _age_ms(row, now) > row.expiry_s * 1000


def remaining_expiry_s(row: Row) -> int | None:
    if not row.expiry_s:
        return None
    return max(1, row.expiry_s - _age_ms(row) // 1000)
