"""Built-in pipelines: the heartbeat on `tele`, and a synthetic test source for commissioning."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from edge.pipeline import NotAccepted, Pipeline
from protocol.events import Kind

if TYPE_CHECKING:
    from edge.runtime import Gateway

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c() -> float | None:
    """The SoC temperature on a Pi (thermal_zone0); None where the board has no sensor."""
    try:
        return round(int(THERMAL_ZONE.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def system_health(disk_path: Path) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    try:
        disk_free = psutil.disk_usage(str(disk_path)).free
    except OSError:
        disk_free = None
    out: dict[str, Any] = {
        "load1": round(os.getloadavg()[0], 2),
        "mem_avail_mb": vm.available // 2**20,
        "rss_mb": psutil.Process().memory_info().rss // 2**20,
        "disk_free_mb": None if disk_free is None else disk_free // 2**20,
    }
    temp = cpu_temperature_c()
    if temp is not None:
        out["cpu_temp_c"] = temp
    return out


class Heartbeat(Pipeline):
    """Telemetry every `health.heartbeat_s`: host, outbox depth and evictions, pipelines."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__("heartbeat", gateway)
        self.gateway = gateway

    def snapshot(self) -> dict[str, Any]:
        gw = self.gateway
        status = gw.status()
        return {
            "uptime_s": int(status["uptime_s"]),
            **system_health(gw.config.outbox.path.parent),
            "outbox": status["outbox"]["depth"],
            "evicted": status["outbox"]["evicted"],
            "uplink": {k: v for k, v in status["uplink"].items() if k != "last_error"},
            "pipelines": {
                name: s.get("state") for name, s in status["pipelines"].items() if name != self.name
            },
        }

    def run(self, stop: threading.Event) -> None:
        self.set_state("ok")
        interval = self.gateway.config.health.heartbeat_s
        while not stop.is_set():
            try:
                self.gateway.emit(Kind.TELEMETRY, "gateway", self.snapshot())
            except NotAccepted as exc:  # telemetry: the next beat says the same, newer
                self.set_state("degraded", str(exc)[:200])
            else:
                if self.state != "ok":
                    self.set_state("ok")
            stop.wait(interval)


class TestSource(Pipeline):
    """Readings (and optionally test alarms) on a timer: proves the path end to end."""

    __test__ = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__("test-source", gateway)
        self.cfg = gateway.config.test_source
        self.sent = 0

    def run(self, stop: threading.Event) -> None:
        self.set_state("ok")
        next_alarm = time.monotonic() + self.cfg.alarm_every_s if self.cfg.alarm_every_s else None
        while not stop.wait(self.cfg.interval_s):
            try:
                self.ctx.emit(Kind.READING, "test/counter", {"value": self.sent + 1})
                self.sent += 1
                if next_alarm is not None and time.monotonic() >= next_alarm:
                    self.ctx.emit(Kind.ALARM, "test/alarm", {"cause": "test"})
                    next_alarm += self.cfg.alarm_every_s  # only once it was committed
            except NotAccepted as exc:
                self.set_state("degraded", str(exc)[:200])
                continue
            if self.state != "ok":
                self.set_state("ok")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "sent": self.sent}
