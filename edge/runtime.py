"""The gateway process: uplink, supervised pipelines, heartbeat, commands, systemd notify.

Every pipeline runs in its own supervised thread; one that raises is restarted with backoff and
reported as a fault, and never stops the others. READY and WATCHDOG go to systemd only while the
uplink and every pipeline thread are alive and no pipeline has been failing for long.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import backoff
import cbor2

from edge import config as config_mod
from edge.alarm_ack import AckSupervisor
from edge.config import Config
from edge.events import Event, Kind, Severity
from edge.pipeline import AckListener, CommandHandler, Pipeline
from edge.uplink.mqtt import Uplink
from edge.uplink.outbox import Outbox, OutboxError

log = logging.getLogger("wardgate.runtime")

#: a pipeline failing for longer than this makes the gateway unhealthy (systemd restarts it)
FAILED_UNHEALTHY_S = 120.0


class Gateway:
    """Implements edge.pipeline.Context for the pipelines it supervises."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        extra_pipelines: Callable[[Gateway], list[Pipeline]] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.topics = config.topics
        self.started_mono = time.monotonic()
        self.outbox = Outbox(config.outbox.path, config.outbox.max_events, config.outbox.fsync)
        self.uplink = Uplink(
            config.uplink,
            self.topics,
            self.outbox,
            client_id=config.uplink.client_id or config.gateway.id,
            state_extra=self._state_extra,
        )
        self.uplink.on_message = self._on_message
        self._extra_pipelines = extra_pipelines
        self._commands: dict[str, CommandHandler] = {}
        self._ack_listeners: list[AckListener] = []
        self._command_queue: queue.Queue[tuple[str, bytes, Any] | None] = queue.Queue(256)
        self._stop = threading.Event()
        self._pipeline_stop = threading.Event()
        self._supervisors: dict[str, threading.Thread] = {}
        self.pipelines: list[Pipeline] = []
        self._failed_since: dict[str, float] = {}
        self._dropped = 0
        self._lock = threading.Lock()
        self._install_builtin_commands()
        self.ack_supervisor: AckSupervisor | None = None
        if config.alarm_ack.enabled:
            self.ack_supervisor = AckSupervisor(self)

    # --- Context ---------------------------------------------------------------------------
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
        also = ()
        if event.kind is Kind.ALARM and self.ack_supervisor is not None:
            also = (self.ack_supervisor.tracking_statement(event),)  # same commit, same fsync
        try:
            committed = self.uplink.submit(event, also)
        except OutboxError as exc:
            self._dropped += 1
            log.warning("%s", exc)
            return event
        if committed.kind in (Kind.ALARM, Kind.FAULT):
            log.warning(
                "%s %s from %s: %s (id %s)",
                committed.kind,
                committed.severity.name.lower(),
                committed.source,
                committed.data,
                committed.id_hex,
            )
        return committed

    def publish_snapshot(self, camera: str, jpeg: bytes, event_id: bytes) -> None:
        self.uplink.publish_volatile(
            self.topics.snap(camera),
            jpeg,
            qos=0,
            ContentType="image/jpeg",
            CorrelationData=event_id,
        )

    def add_command(self, name: str, handler: CommandHandler) -> None:
        self._commands[name] = handler

    def add_ack_listener(self, listener: AckListener) -> None:
        self._ack_listeners.append(listener)

    # --- lifecycle -------------------------------------------------------------------------
    def build_pipelines(self) -> list[Pipeline]:
        from edge.health import Heartbeat, TestSource

        pipelines: list[Pipeline] = [Heartbeat(self)]
        if self.ack_supervisor is not None:
            pipelines.append(self.ack_supervisor)
        if self.config.test_source.enabled:
            pipelines.append(TestSource(self))
        # imported only when configured: the vision stack alone costs 30 MB (numpy, OpenCV)
        if self.config.serial.ports:
            from sensor_drivers.pipeline import build_pipelines as serial_pipelines

            pipelines += serial_pipelines(self)
        if any(camera.enabled for camera in self.config.vision.cameras):
            from edge.vision.pipeline import build_pipelines as vision_pipelines

            pipelines += vision_pipelines(self)
        if self._extra_pipelines is not None:
            pipelines += self._extra_pipelines(self)
        return pipelines

    def start(self) -> None:
        self.uplink.start()
        threading.Thread(target=self._command_worker, name="commands", daemon=True).start()
        self._start_pipelines(self.build_pipelines())

    def _start_pipelines(self, pipelines: list[Pipeline]) -> None:
        self._pipeline_stop = threading.Event()
        self.pipelines = pipelines
        self._supervisors = {}
        for p in pipelines:
            t = threading.Thread(
                target=self._supervise, args=(p, self._pipeline_stop), name=p.name, daemon=True
            )
            self._supervisors[p.name] = t
            t.start()

    def _stop_pipelines(self, timeout: float = 10.0) -> None:
        self._pipeline_stop.set()
        deadline = time.monotonic() + timeout
        for name, t in self._supervisors.items():
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline %s did not stop within %.0f s", name, timeout)

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        self._stop_pipelines()
        self._command_queue.put(None)
        self.uplink.stop(flush_timeout)
        self.outbox.close()

    def run_forever(self, stop: threading.Event | None = None) -> int:
        """Run until SIGTERM/SIGINT (or `stop`); talk to systemd; flush on the way out."""
        stop = stop or threading.Event()
        notifier = _SystemdNotifier()

        def on_signal(signum: int, frame: object) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        self.start()
        ready = False
        while not stop.wait(notifier.interval):
            healthy, why = self.healthy()
            if healthy:
                if not ready:
                    notifier.notify("READY=1")
                    ready = True
                if self.config.health.watchdog:
                    notifier.notify("WATCHDOG=1")
                notifier.notify(f"STATUS={self._status_line()}")
            else:
                notifier.notify(f"STATUS=unhealthy: {why}")
                log.error("unhealthy: %s (watchdog not fed)", why)
        notifier.notify("STOPPING=1")
        self.stop(flush_timeout=5.0)
        return 0

    def healthy(self) -> tuple[bool, str]:
        if not self.uplink.threads_alive():
            return False, "uplink threads died"
        now = time.monotonic()
        for p in self.pipelines:
            t = self._supervisors.get(p.name)
            if t is None or not t.is_alive():
                return False, f"pipeline {p.name} supervisor died"
            since = self._failed_since.get(p.name)
            if since is not None and now - since > FAILED_UNHEALTHY_S:
                return False, f"pipeline {p.name} failing for {now - since:.0f} s"
        return True, "ok"

    def _status_line(self) -> str:
        link = "connected" if self.uplink.connected else "offline"
        return f"uplink {link}, outbox {len(self.outbox)}, {len(self.pipelines)} pipelines"

    # --- supervision -----------------------------------------------------------------------
    def _supervise(self, p: Pipeline, stop: threading.Event) -> None:
        delays = backoff.expo(base=2, factor=1.0, max_value=60.0)
        next(delays)
        failing = False
        while not stop.is_set():
            started = time.monotonic()
            try:
                p.set_state("starting")
                p.run(stop)
                if stop.is_set():
                    break
                raise RuntimeError("run() returned while the gateway was running")
            except Exception as exc:
                log.exception("pipeline %s failed", p.name)
                p.set_state("failed", f"{type(exc).__name__}: {exc}"[:200])
                self._failed_since.setdefault(p.name, time.monotonic())
                if not failing:
                    failing = True
                    self.emit(
                        Kind.FAULT,
                        f"pipe/{p.name}",
                        {"active": True, "code": "pipeline_failed", "error": str(exc)[:80]},
                    )
            finally:
                try:
                    p.close()
                except Exception:
                    log.exception("pipeline %s: close failed", p.name)
            if time.monotonic() - started > 60:
                delays = backoff.expo(base=2, factor=1.0, max_value=60.0)
                next(delays)
            stop.wait(backoff.full_jitter(next(delays)) + 0.1)
            if failing and not stop.is_set():
                # restored once it runs again; a new failure raises a new fault
                self._failed_since.pop(p.name, None)
                failing = False
                self.emit(
                    Kind.FAULT,
                    f"pipe/{p.name}",
                    {"active": False, "code": "pipeline_failed"},
                )
        p.set_state("stopped")

    # --- messages in -----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, properties: Any) -> None:
        try:
            self._command_queue.put_nowait((topic, payload, properties))
        except queue.Full:
            log.warning("command queue full; dropped message on %s", topic)

    def _command_worker(self) -> None:
        while True:
            item = self._command_queue.get()
            if item is None:
                return
            topic, payload, properties = item
            try:
                if topic == self.topics.ack:
                    self._handle_ack(payload)
                elif topic.startswith(self.topics.base + "/cmd/") and topic != self.topics.cmd_res:
                    self._handle_command(topic.rsplit("/", 1)[-1], payload, properties)
            except Exception:
                log.exception("handling %s failed", topic)

    def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = _parse_object(payload)
            event_id = str(ack["id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed alarm acknowledgement ignored: %s", exc)
            return
        for listener in self._ack_listeners:
            listener(event_id, ack)

    def _handle_command(self, name: str, payload: bytes, properties: Any) -> None:
        reply: dict[str, Any] = {"cmd": name}
        try:
            request = _parse_object(payload) if payload.strip() else {}
            if "id" in request:
                reply["id"] = request["id"]
            handler = self._commands.get(name)
            if handler is None:
                raise ValueError(f"unknown command {name!r}; known: {sorted(self._commands)}")
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise ValueError("`args` must be an object")
            reply["result"] = handler(args)
            reply["ok"] = True
        except Exception as exc:
            reply["ok"] = False
            reply["error"] = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
            )
        correlation = getattr(properties, "CorrelationData", None)
        extra = {"CorrelationData": correlation} if correlation else {}
        self.uplink.publish_volatile(
            self.topics.cmd_res,
            json.dumps(reply, separators=(",", ":"), default=str).encode(),
            qos=1,
            ContentType="application/json",
            **extra,
        )

    # --- built-in commands -----------------------------------------------------------------
    def _install_builtin_commands(self) -> None:
        self.add_command("ping", lambda args: {"pong": True, "time_ms": time.time_ns() // 10**6})
        self.add_command("status", lambda args: self.status())
        self.add_command("test-alarm", self._cmd_test_alarm)
        self.add_command("reload", self._cmd_reload)

    def _cmd_test_alarm(self, args: dict[str, Any]) -> dict[str, Any]:
        event = self.emit(Kind.ALARM, str(args.get("source", "test")), {"cause": "test"})
        return {"event_id": event.id_hex}

    def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.config_path is None:
            raise ValueError("this gateway runs on built-in defaults; there is no file to reload")
        new = config_mod.load(self.config_path)  # ConfigError: answered, nothing changes
        fixed = ("gateway", "uplink", "outbox")
        needs_restart = [s for s in fixed if getattr(new, s) != getattr(self.config, s)]
        with self._lock:
            self._stop_pipelines()
            self.config = new
            self._start_pipelines(self.build_pipelines())
        names = [p.name for p in self.pipelines]
        out: dict[str, Any] = {"reloaded": str(self.config_path), "pipelines": names}
        if needs_restart:
            out["restart_required_for"] = needs_restart
        return out

    # --- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "gateway": self.config.gateway.id,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "uplink": self.uplink.status(),
            "outbox": {
                "depth": self.outbox.depth(),
                "evicted": self.outbox.evictions,
                "dropped": self._dropped,
            },
            "pipelines": {p.name: p.status() for p in self.pipelines},
        }

    def _state_extra(self) -> dict[str, Any]:
        from edge import __version__

        return {"version": __version__, "site_type": self.config.gateway.site_type}


def _parse_object(payload: bytes) -> dict[str, Any]:
    text = payload.lstrip()
    if text[:1] == b"{":
        obj = json.loads(payload)
    else:
        try:
            obj = cbor2.loads(payload)
        except Exception as exc:
            raise ValueError(f"payload is neither JSON nor CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("payload must be a JSON object or CBOR map")
    return obj


class _SystemdNotifier:
    """sd_notify through the `sdnotify` package; a no-op outside systemd."""

    def __init__(self) -> None:
        self._socket = os.environ.get("NOTIFY_SOCKET")
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.interval = min(5.0, usec / 2e6) if usec else 5.0
        self._notifier = None
        if self._socket:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    def notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)
