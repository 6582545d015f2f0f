"""End-to-end alarm acknowledgement: a transmission fault when the receiving centre stays silent.

EN 54-21 (type 1) wants a fault when an alarm is not acknowledged by the receiving centre within
100 s. Each alarm the gateway commits is tracked (in the outbox database, so a restart does not
forget it) until a receiver's acknowledgement arrives on `ack`. Past `alarm_ack.timeout_s` the
gateway raises a `transmission` fault (event + log + optional output, e.g. a sysfs LED/GPIO value
file driving a lamp), cleared when the acknowledgement finally arrives (or a receiver re-acks).

Deadlines are on CLOCK_BOOTTIME (edge/clock.py), never the wall clock: each row stores the boot
id and the boottime of its commit, so a clock step (NTP at boot on a Pi without RTC, a manual
`date -s`) neither hides a fault nor raises a false one. A row from an earlier boot is aged by
the wall clock, and is overdue at the latest `timeout_s` into this boot (it is at least that old).

Every fault and restore is emitted before the row records it (the accept contract in
edge/pipeline.py): one that could not be committed is emitted again at the next check.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from edge import clock
from edge.pipeline import NotAccepted, Pipeline
from protocol import faults
from protocol.events import Event, Kind, now_ms

if TYPE_CHECKING:
    from edge.runtime import Gateway

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_acks (
    event_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    committed_ms INTEGER NOT NULL,
    faulted INTEGER NOT NULL DEFAULT 0
);
"""
#: columns added since the first release (ALTER TABLE on an existing database)
MIGRATIONS = (
    ("boot_id", "ALTER TABLE pending_acks ADD COLUMN boot_id TEXT"),
    ("mono_ms", "ALTER TABLE pending_acks ADD COLUMN mono_ms INTEGER"),
    ("acked", "ALTER TABLE pending_acks ADD COLUMN acked INTEGER NOT NULL DEFAULT 0"),
)


class AckSupervisor(Pipeline):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__("alarm-ack", gateway)
        self.cfg = gateway.config.alarm_ack
        # the outbox's own connection: tracking rows commit with their alarm (tracking_statement)
        self._outbox = gateway.outbox
        self._outbox.sql(SCHEMA, script=True)
        have = {row[1] for row in self._outbox.sql("PRAGMA table_info(pending_acks)")}
        for column, statement in MIGRATIONS:
            if column not in have:
                self._outbox.sql(statement)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.acked = 0
        self.faults = 0
        self._output_on: bool | None = None
        # the gateway hands acknowledgements to on_ack from its own ack thread

    @staticmethod
    def tracking_statement(event: Event) -> tuple[str, tuple]:
        """Committed by the outbox in the alarm's own transaction: tracked iff accepted."""
        return (
            "INSERT OR IGNORE INTO pending_acks(event_id, source, committed_ms, boot_id, mono_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (event.id_hex, event.source, event.time_ms, clock.boot_id(), clock.mono_ms()),
        )

    def reconfigure(self, cfg: Any) -> None:
        """A reload's [alarm_ack]: the new timeout applies to alarms already waiting too."""
        with self._lock:
            if cfg.output != self.cfg.output:
                self._drive_output(False)  # the old lamp off; the new one is driven next check
                self._output_on = None
            self.cfg = cfg
        self._wake.set()

    def on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        with self._lock:
            rows = self._outbox.sql(
                "SELECT faulted FROM pending_acks WHERE event_id = ? AND acked = 0", (event_id,)
            )
            if not rows:
                return  # unknown or already acknowledged (receivers re-ack duplicates)
            self.acked += 1
            if not rows[0][0]:
                self._outbox.sql("DELETE FROM pending_acks WHERE event_id = ?", (event_id,))
                return
            # faulted: the restore is owed; the row says so until the restore is committed
            self._outbox.sql("UPDATE pending_acks SET acked = 1 WHERE event_id = ?", (event_id,))
            self.log.warning("alarm %s acknowledged late by %s", event_id, ack.get("by", "?"))
            self._restore_acked()
        self._wake.set()

    def _restore_acked(self) -> None:
        """Under self._lock: a fault restore for each late alarm acknowledged since."""
        for (event_id,) in self._outbox.sql(
            "SELECT event_id FROM pending_acks WHERE acked = 1 AND faulted = 1"
        ):
            try:
                self.ctx.emit(
                    Kind.FAULT,
                    "uplink/ack",
                    {"active": False, "code": faults.ALARM_UNACKNOWLEDGED, "alarm": event_id},
                )
            except NotAccepted as exc:
                self.set_state("degraded", f"fault restore not committed: {exc}"[:200])
                return  # the row stays: tried again at the next check
            self._outbox.sql("DELETE FROM pending_acks WHERE event_id = ?", (event_id,))
        if self.state == "degraded":
            self.set_state("ok")

    def run(self, stop: threading.Event) -> None:
        self.set_state("ok")
        while not stop.is_set():
            self.check()
            self._wake.wait(min(1.0, self.cfg.timeout_s / 4))
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def _late(self) -> list[tuple[str, str, int, str | None, int | None]]:
        timeout_ms = int(self.cfg.timeout_s * 1000)
        now_mono = clock.mono_ms()
        boot = clock.boot_id()
        # this boot: boottime; an earlier boot (or a row from before the migration): the wall
        # clock, or this boot's own age, whichever says older
        return self._outbox.sql(
            "SELECT event_id, source, committed_ms, boot_id, mono_ms FROM pending_acks "
            "WHERE faulted = 0 AND acked = 0 AND ("
            " (boot_id = ? AND mono_ms IS NOT NULL AND mono_ms <= ?)"
            " OR ((boot_id IS NULL OR boot_id != ? OR mono_ms IS NULL)"
            "     AND (committed_ms <= ? OR ? >= ?)))",
            (boot, now_mono - timeout_ms, boot, now_ms() - timeout_ms, now_mono, timeout_ms),
        )

    def _age_s(self, committed_ms: int, boot: str | None, mono: int | None) -> int:
        if boot == clock.boot_id() and mono is not None:
            return round((clock.mono_ms() - mono) / 1000)
        return round(max(now_ms() - committed_ms, clock.mono_ms()) / 1000)

    def check(self) -> None:
        with self._lock:
            self._restore_acked()
            late = self._late()
            [(outstanding,)] = self._outbox.sql(
                "SELECT count(*) FROM pending_acks WHERE faulted = 1 AND acked = 0"
            )
            self._drive_output(outstanding + len(late) > 0)  # the lamp first: it needs no network
            for event_id, source, committed, boot, mono in late:
                age = self._age_s(committed, boot, mono)
                try:
                    self.ctx.emit(
                        Kind.FAULT,
                        "uplink/ack",
                        {
                            "active": True,
                            "code": faults.ALARM_UNACKNOWLEDGED,
                            "alarm": event_id,
                            "age_s": age,
                        },
                    )
                except NotAccepted as exc:
                    self.set_state("degraded", f"fault not committed: {exc}"[:200])
                    return  # not marked: raised again at the next check
                self._outbox.sql(
                    "UPDATE pending_acks SET faulted = 1 WHERE event_id = ?", (event_id,)
                )
                self.faults += 1
                self.log.error(
                    "TRANSMISSION FAULT: alarm %s from %s not acknowledged after %d s",
                    event_id,
                    source,
                    age,
                )

    def _drive_output(self, on: bool) -> None:
        if self.cfg.output is None or on == self._output_on:
            return
        try:
            with open(self.cfg.output, "w") as f:  # sysfs value files take one write
                f.write("1\n" if on else "0\n")
            self._output_on = on
        except OSError as exc:
            self.set_state("degraded", f"cannot drive {self.cfg.output}: {exc}")

    def pending_ids(self) -> set[str]:
        """The alarms still waiting for a receiver's acknowledgement (the demo shows them)."""
        with self._lock:
            rows = self._outbox.sql("SELECT event_id FROM pending_acks WHERE acked = 0")
        return {row[0] for row in rows}

    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = self._outbox.sql("SELECT count(*) FROM pending_acks WHERE acked = 0")[0][0]
            faulted = self._outbox.sql(
                "SELECT count(*) FROM pending_acks WHERE faulted = 1 AND acked = 0"
            )[0][0]
        return {
            **super().status(),
            "pending": pending,
            "faulted": faulted,
            "acked": self.acked,
            "faults": self.faults,
        }

    def close(self) -> None:
        """Keeps its database connection: the supervisor restarts this object, never rebuilds it."""
