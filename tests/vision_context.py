"""A real, in-memory `edge.pipeline.Context` for camera-pipeline tests.

It builds real `protocol.events.Event`s (and encodes each to CBOR, as the uplink would) and keeps
them, with the snapshots, for the test to inspect. The full runtime (outbox + MQTT) is tested
with the camera pipeline in test_vision_gateway.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import Config, from_dict
from protocol.events import Event, Kind, Severity
from tests import event_schema

DATA = Path(__file__).resolve().parent / "data"


def vision_config(*cameras: dict[str, Any], **vision: Any) -> Config:
    return from_dict(
        {
            "gateway": {"id": "gw-test-1", "district": "d1", "ward": "w1"},
            "vision": {**vision, "cameras": list(cameras)},
        }
    )


class RecordingContext:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.topics = config.topics
        self.events: list[Event] = []
        self.snapshots: list[tuple[str, bytes, bytes]] = []  # camera, jpeg, event id
        self.wire_sizes: list[int] = []
        self.commands: dict[str, Any] = {}
        self._cond = threading.Condition()

    def emit(
        self,
        kind: Kind | str,
        source: str,
        data: dict[str, Any] | None = None,
        severity: Severity | None = None,
    ) -> Event:
        event = Event(
            kind=Kind(kind),
            source=source,
            data=data or {},
            severity=severity,
            gateway=self.config.gateway.id,
        )
        size = len(event.to_cbor())  # fails here if the data cannot go on the wire
        event.to_json()
        event_schema.check(event.to_cbor())  # decodes, and keeps the contract's JSON Schema
        with self._cond:
            self.events.append(event)
            self.wire_sizes.append(size)
            self._cond.notify_all()
        return event

    def publish_snapshot(self, camera: str, jpeg: bytes, event_id: bytes) -> None:
        with self._cond:
            self.snapshots.append((camera, jpeg, event_id))
            self._cond.notify_all()

    def add_command(self, name: str, handler: Any) -> None:
        self.commands[name] = handler

    def add_ack_listener(self, listener: Any) -> None:
        pass

    # --- for the tests ---------------------------------------------------------------------
    def of(self, kind: str, ev: str | None = None) -> list[Event]:
        with self._cond:
            return [
                e for e in self.events if e.kind == kind and (ev is None or e.data.get("ev") == ev)
            ]

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return result
                self._cond.wait(min(left, 0.2))
