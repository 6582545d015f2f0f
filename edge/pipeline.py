"""What every pipeline (camera, serial port, heartbeat, test source) is to the supervisor.

A pipeline is a loop in its own thread. It reports what it sees through `ctx.emit`, which returns
only once the event is durable, and its health through `set_state`. The supervisor restarts a
pipeline whose `run` raises, so one broken camera never stops a fire alarm.

The accept contract: `ctx.emit` either commits the event (and returns it) or raises
`NotAccepted`; there is no third outcome. A pipeline changes what it remembers about the world
(a sequence number seen, an alarm latched, a fault raised) and acknowledges a device only after
`emit` returned. On `NotAccepted` it leaves that state as it was, so the same observation is
emitted again when the device repeats it or the next poll still sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from edge.config import CoreConfig as Config
    from protocol.events import Event, Kind, Severity
    from protocol.topics import GatewayTopics

State = Literal["starting", "ok", "degraded", "failed", "stopped"]

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
AckListener = Callable[[str, dict[str, Any]], None]


class NotAccepted(RuntimeError):
    """`emit` could not commit the event: nothing was stored and nothing will be sent.

    The caller must not treat the event as delivered: no acknowledgement to the device, no
    latch or dedupe state recorded. `__cause__` holds the storage error."""


class Context(Protocol):
    """What the runtime offers a pipeline."""

    config: Config
    topics: GatewayTopics

    def emit(
        self,
        kind: Kind | str,
        source: str,
        data: dict[str, Any] | None = None,
        severity: Severity | None = None,
    ) -> Event:
        """Commit an event to the outbox and return it (with its lane sequence number).

        Returns only once the event is durable: it then reaches the broker as soon as it can,
        across crashes and outages. Raises `NotAccepted` when it could not be committed (storage
        error, outbox full of higher-priority events); nothing else. See the module docstring."""

    def publish_snapshot(self, camera: str, jpeg: bytes, event_id: bytes) -> None:
        """Best-effort JPEG on snap/<camera>; never blocks, never queued on disk."""

    def add_command(self, name: str, handler: CommandHandler) -> None:
        """Answer `cmd/<name>`; the handler's dict (or exception) goes to cmd/res."""

    def add_ack_listener(self, listener: AckListener) -> None:
        """Called with (event id hex, ack payload) when a receiver acknowledges an alarm."""


class Pipeline:
    """Base class: override `run` (loop until `stop` is set) and optionally `close`."""

    def __init__(self, name: str, ctx: Context) -> None:
        self.name = name
        self.ctx = ctx
        self.log = logging.getLogger(f"wardgate.{name}")
        self._state: State = "starting"
        self._detail = ""
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release devices and sockets; called after `run` returns or raises."""

    def wake(self) -> None:
        """Called right after `stop` is set: a `run` that waits on something else returns now."""

    def set_state(self, state: State, detail: str = "") -> None:
        with self._lock:
            if state != self._state:
                self._since = time.monotonic()
                if state in ("degraded", "failed"):
                    self.log.warning("%s: %s", state, detail or "no detail")
                else:
                    self.log.info("%s%s", state, f": {detail}" if detail else "")
            self._state, self._detail = state, detail

    @property
    def state(self) -> State:
        return self._state

    def status(self) -> dict[str, Any]:
        """Shown in the heartbeat; subclasses add their counters."""
        with self._lock:
            out: dict[str, Any] = {"state": self._state}
            if self._detail:
                out["detail"] = self._detail
            out["for_s"] = round(time.monotonic() - self._since, 1)
        return out
