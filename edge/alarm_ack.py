"""End-to-end alarm acknowledgement: a transmission fault when the receiving centre stays silent.

EN 54-21 (type 1) wants a fault when an alarm is not acknowledged by the receiving centre within
100 s. Each alarm the gateway commits is tracked (in the outbox database, so a restart does not
forget it) until a receiver's acknowledgement arrives on `ack`. Past `alarm_ack.timeout_s` the
gateway raises a `transmission` fault (event + log + optional output, e.g. a sysfs LED/GPIO value
file driving a lamp), cleared when the acknowledgement finally arrives.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from edge.events import Event, Kind
from edge.pipeline import Pipeline

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


class AckSupervisor(Pipeline):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__("alarm-ack", gateway)
        self.cfg = gateway.config.alarm_ack
        # the outbox's own connection: tracking rows commit with their alarm (tracking_statement)
        self._outbox = gateway.outbox
        self._outbox.sql(SCHEMA, script=True)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.acked = 0
        self.faults = 0
        self._output_on: bool | None = None
        gateway.add_ack_listener(self.on_ack)

    @staticmethod
    def tracking_statement(event: Event) -> tuple[str, tuple]:
        """Committed by the outbox in the alarm's own transaction: tracked iff accepted."""
        return (
            "INSERT OR IGNORE INTO pending_acks(event_id, source, committed_ms) VALUES (?, ?, ?)",
            (event.id_hex, event.source, event.time_ms),
        )

    def on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        with self._lock:
            rows = self._outbox.sql(
                "SELECT source, faulted FROM pending_acks WHERE event_id = ?", (event_id,)
            )
            if not rows:
                return  # unknown or already acknowledged (receivers re-ack duplicates)
            row = rows[0]
            self._outbox.sql("DELETE FROM pending_acks WHERE event_id = ?", (event_id,))
            self.acked += 1
        if row[1]:
            self.ctx.emit(
                Kind.FAULT,
                "uplink/ack",
                {"active": False, "code": "alarm_unacknowledged", "alarm": event_id},
            )
            self.log.warning("alarm %s acknowledged late by %s", event_id, ack.get("by", "?"))
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        self.set_state("ok")
        while not stop.is_set():
            self.check()
            self._wake.wait(min(1.0, self.cfg.timeout_s / 4))
            self._wake.clear()

    def check(self) -> None:
        deadline = time.time_ns() // 10**6 - int(self.cfg.timeout_s * 1000)
        with self._lock:
            late = self._outbox.sql(
                "SELECT event_id, source, committed_ms FROM pending_acks "
                "WHERE faulted = 0 AND committed_ms < ?",
                (deadline,),
            )
            for event_id, _, _ in late:
                self._outbox.sql(
                    "UPDATE pending_acks SET faulted = 1 WHERE event_id = ?", (event_id,)
                )
            [(outstanding,)] = self._outbox.sql(
                "SELECT count(*) FROM pending_acks WHERE faulted = 1"
            )
        self._drive_output(outstanding > 0)  # the local lamp first: it needs no network
        for event_id, source, committed in late:
            self.faults += 1
            age = round((time.time_ns() // 10**6 - committed) / 1000)
            self.log.error(
                "TRANSMISSION FAULT: alarm %s from %s not acknowledged after %d s",
                event_id,
                source,
                age,
            )
            self.ctx.emit(
                Kind.FAULT,
                "uplink/ack",
                {"active": True, "code": "alarm_unacknowledged", "alarm": event_id, "age_s": age},
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

    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = self._outbox.sql("SELECT count(*) FROM pending_acks")[0][0]
        return {**super().status(), "pending": pending, "acked": self.acked, "faults": self.faults}

    def close(self) -> None:
        """Keeps its database connection: the supervisor restarts this object, never rebuilds it."""
