"""What every screen must see at once: the broker link, the counters, and "something changed".

Ingest (an MQTT thread), the escalation timer and the console's own actions call `changed()`;
each open browser's server-push stream waits on `wait()` and then re-reads the store. One owner
for this state, shared by reference: nothing here is persisted (the store is the record).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BrokerStatus:
    connected: bool = False
    since_ms: int = 0
    detail: str = "not connected yet"
    refused: bool = False  # credentials or authorisation refused: ingest exits non-zero


@dataclass
class LiveState:
    revision: int = 0
    broker: BrokerStatus = field(default_factory=BrokerStatus)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "events": 0,
            "duplicates": 0,
            "quarantined": 0,
            "acks_sent": 0,
            "state": 0,
            "tele": 0,
            "snapshots": 0,
            "escalations": 0,
            "webhook_failures": 0,
        }
    )
    # more status for the screens, e.g. the DC-09 link's: a value, or a callable read each time
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.urgent_revision = 0  # the revision of the last new alarm (changed(urgent=True))
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    # --- writers (any thread) --------------------------------------------------------------
    def changed(self, *, urgent: bool = False) -> None:
        """The store changed; `urgent` for a new alarm, which the screens must not batch."""
        with self._lock:
            self.revision += 1
            if urgent:
                self.urgent_revision = self.revision
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed: its stream is gone
                pass

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def set_broker(self, connected: bool, detail: str, *, refused: bool = False) -> None:
        with self._lock:
            if connected != self.broker.connected or detail != self.broker.detail:
                self.broker = BrokerStatus(connected, time.time_ns() // 1_000_000, detail, refused)
        self.changed()

    # --- readers ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            extra = dict(self.extra)
            snap = {
                "revision": self.revision,
                "broker": {
                    "connected": self.broker.connected,
                    "since_ms": self.broker.since_ms,
                    "detail": self.broker.detail,
                },
                "counts": dict(self.counts),
            }
        return {**snap, **{k: (v() if callable(v) else v) for k, v in extra.items()}}

    async def wait(self, seen_revision: int, timeout_s: float) -> int:
        """Wait (in the console's event loop) until the revision passes `seen_revision`."""
        event = asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.revision != seen_revision:
                return self.revision
            self._waiters.add(key)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(key)
        return self.revision
