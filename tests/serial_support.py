"""Running one serial port's pipeline against a recording Context (tests/vision_context.py).

Shared by the node-protocol and Modbus tests: both build the same one-port config and run the
pipeline in its own thread, as the supervisor does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge.config import from_dict
from sensor_drivers.pipeline import build_pipelines
from tests.vision_context import RecordingContext


def port_ctx(settings: dict[str, Any]) -> RecordingContext:
    """A recording Context for a gateway with this one `[[serial.ports]]` entry."""
    return RecordingContext(
        from_dict(
            {
                "gateway": {"id": "gw-test-1", "district": "d1", "ward": "w1"},
                "serial": {"ports": [settings], "readings": {"min_interval_s": 0}},
            }
        )
    )


class Running:
    """A pipeline in its own thread, as the supervisor runs it."""

    def __init__(self, ctx: RecordingContext) -> None:
        [self.pipeline] = build_pipelines(ctx)
        self.ctx = ctx
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.pipeline.run, args=(self.stop,))
        self.thread.start()

    def wait_open(self) -> Running:
        """pyserial flushes the input on open: a peer should not talk before that."""
        deadline = time.monotonic() + 5
        while not self.pipeline.port.is_open:
            assert time.monotonic() < deadline, "port never opened"
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pipeline.close()
        assert not self.thread.is_alive()


def events(ctx: RecordingContext, kind: str, source: str | None = None) -> list:
    return [e for e in ctx.of(kind) if source is None or e.source == source]


def wait(ctx: RecordingContext, what, timeout: float = 5.0):
    got = ctx.wait_for(what, timeout)
    assert got, "timed out"
    return got
