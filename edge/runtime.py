"""The gateway process: uplink, supervised pipelines, heartbeat, commands, systemd notify.

Every pipeline runs in its own supervised thread; one that raises is restarted with backoff and
reported as a fault, and never stops the others. READY and WATCHDOG go to systemd only while the
uplink and every pipeline thread are alive, no pipeline has been failing for long and the outbox
accepts events.

`emit` commits or raises `NotAccepted` (edge/pipeline.py has the contract).

Messages from the broker take two paths that never share a queue: alarm acknowledgements go to
their own thread (quick, never behind a command), commands to a bounded command queue. Repeated
`reload` requests waiting in that queue are coalesced into one reload that answers all of them;
a command that finds the queue full is answered `ok: false` (rate-limited) and logged.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from edge import config as config_mod
from edge.alarm_ack import AckSupervisor
from edge.config import CoreConfig as Config
from edge.pipeline import AckListener, CommandHandler, NotAccepted, Pipeline
from edge.uplink.mqtt import Uplink
from edge.uplink.outbox import Outbox, OutboxError
from protocol import faults
from protocol.events import Event, Kind, Severity
from protocol.retry import Backoff

log = logging.getLogger("wardgate.runtime")

#: a pipeline failing for longer than this makes the gateway unhealthy (systemd restarts it);
#: so does an outbox that has accepted nothing for this long
FAILED_UNHEALTHY_S = 120.0
#: a run that lasted this long ends a failure streak (and resets the restart backoff)
RUN_OK_S = 60.0
#: commands waiting to be handled; more are answered "busy"
COMMAND_QUEUE = 64
#: reload requests answered by one coalesced reload
MAX_RELOAD_WAITERS = 1024
#: alarm acknowledgements waiting for their thread (each takes well under a millisecond)
ACK_QUEUE = 10_000
#: labels the birth message carries at most (a few hundred sensors; `state` stays below 60 KB
#: of ASCII text, docs/topics.md)
MAX_BIRTH_LABELS = 512


class _Limited:
    """At most one log line per `every_s` for one kind of trouble, with the count in between."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last = -1e18
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            msg += f" ({suppressed} more like this since the last report)"
        self.logger.log(level, msg, *args)


class _Generation:
    """One set of running pipelines: a reload stops one generation and starts the next."""

    def __init__(self, pipelines: list[Pipeline]) -> None:
        self.pipelines = pipelines
        self.stop = threading.Event()
        self.supervisors: dict[str, threading.Thread] = {}
        self.failed_since: dict[str, float] = {}  # start of a failure streak
        self.running_since: dict[str, float] = {}  # start of the current run (absent in backoff)


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
        self.outbox = Outbox(
            config.outbox.path,
            config.outbox.max_events,
            config.outbox.fsync,
            disk_budget_mb=config.outbox.disk_budget_mb,
            reserve_kb=config.outbox.reserve_kb,
        )
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
        self._emit_listeners: list[Callable[[Event], None]] = []
        self.localweb: Any = None  # edge.localweb.server.LocalWeb when [localweb] enabled
        # acks and commands never share a queue: a command flood cannot delay or drop an ack
        self._ack_queue: queue.Queue[bytes | None] = queue.Queue(ACK_QUEUE)
        self._cmd_cond = threading.Condition()
        self._cmd_items: deque[tuple[str, bytes, Any]] = deque()
        self._reload_waiters: list[tuple[bytes, Any]] = []
        self._reload_queued = False
        self.command_stats = {"handled": 0, "busy": 0, "reloads": 0, "reloads_coalesced": 0}
        self.acks_received = 0
        self._log_busy = _Limited(log)
        self._busy_replies: deque[float] = deque()
        self._stop = threading.Event()
        self._gen = _Generation([])
        self.pipelines: list[Pipeline] = []
        self._pipe_faults: set[str] = set()  # pipelines whose `pipeline_failed` fault is up
        self._dropped = 0
        self._emit_failing_since: float | None = None
        self._log_not_accepted = _Limited(log)
        self._lock = threading.Lock()
        self._lock_faults = threading.Lock()
        self._install_builtin_commands()
        self.status_socket: Any = None  # edge.selftest.StatusSocket once started
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
        except (OutboxError, sqlite3.Error, OSError) as exc:
            self._dropped += 1
            if self._emit_failing_since is None:
                self._emit_failing_since = time.monotonic()
            level = logging.ERROR if event.kind in (Kind.ALARM, Kind.FAULT) else logging.WARNING
            self._log_not_accepted(
                level, "%s event from %s NOT accepted: %s", event.kind, source, exc
            )
            raise NotAccepted(f"{event.kind} event from {source} not committed: {exc}") from exc
        self._emit_failing_since = None
        for listener in self._emit_listeners:
            try:
                listener(committed)
            except Exception:  # a listener (the technician's page) never fails an emit
                log.exception("emit listener failed")
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

    def add_emit_listener(self, listener: Callable[[Event], None]) -> None:
        """Called with every committed event (the technician's page shows the latest values)."""
        self._emit_listeners.append(listener)

    def run_command(self, name: str, args: dict[str, Any]) -> Any:
        """A command from inside the gateway (the technician's page): the same handlers as
        the MQTT `cmd` topic, without the queue; raises what the handler raises."""
        handler = self._commands.get(name)
        if handler is None:
            raise ValueError(f"unknown command {name!r}; known: {sorted(self._commands)}")
        return handler(args)

    # --- lifecycle -------------------------------------------------------------------------
    def build_pipelines(self) -> list[Pipeline]:
        """The built-ins, then each plugin's pipelines (edge/plugins.py), then the extras.

        Heartbeat, alarm-ack supervision and the test source stay built in: they are part of
        the gateway's own contract (the ack tracking row is committed with the alarm in
        `emit`; `alarm_ack.enabled` is refused by reload), not an optional feature."""
        from edge import plugins
        from edge.health import Heartbeat, TestSource

        pipelines: list[Pipeline] = [Heartbeat(self)]
        if self.ack_supervisor is not None:
            pipelines.append(self.ack_supervisor)
        if self.config.test_source.enabled:
            pipelines.append(TestSource(self))
        # a plugin's build (and its heavy imports: the vision stack alone costs 30 MB) is
        # imported only when its section configures something
        for name, entry in plugins.registry().items():
            section = getattr(self.config, name, None)
            if section is None:
                continue  # a plugin that cannot be imported, and the config does not use it
            plugin = entry.load()
            if plugin.is_active(section):
                pipelines += plugin.build_pipelines(self)
        if self._extra_pipelines is not None:
            pipelines += self._extra_pipelines(self)
        return pipelines

    def start(self) -> None:
        self.uplink.start()
        self._start_status_socket()
        threading.Thread(target=self._ack_worker, name="acks", daemon=True).start()
        threading.Thread(target=self._command_worker, name="commands", daemon=True).start()
        self._start_pipelines(self.build_pipelines())
        if self.config.localweb.enabled:
            from edge.localweb.server import LocalWeb  # the HTTP code loads only when enabled

            try:
                self.localweb = LocalWeb(self)
            except OSError as exc:
                log.error(
                    "technician page not served on %s:%d: %s",
                    self.config.localweb.bind,
                    self.config.localweb.port,
                    exc,
                )

    def _start_status_socket(self) -> None:
        """`wardgate status` asks the running gateway here (edge/selftest.py); a gateway that
        cannot serve it still runs (the fire path never depends on a diagnostic)."""
        from edge import selftest

        path = selftest.socket_path(self.config)
        try:
            self.status_socket = selftest.StatusSocket(self, path)
        except OSError as exc:
            log.warning(
                "status socket %s not served (wardgate status will not answer): %s", path, exc
            )

    def _start_pipelines(self, pipelines: list[Pipeline]) -> None:
        # a new generation: failure streaks of the old one (say, a pipeline stopped in its
        # restart backoff) end with it, so they cannot make the gateway unhealthy later
        gen = _Generation(pipelines)
        self._gen = gen
        self.pipelines = pipelines
        gone = self._pipe_faults - {p.name for p in pipelines}
        for name in sorted(gone):  # a pipeline the reload removed: its failure ended with it
            self._restore_pipe_fault(name)
        for p in pipelines:
            t = threading.Thread(target=self._supervise, args=(p, gen), name=p.name, daemon=True)
            gen.supervisors[p.name] = t
            t.start()

    def _stop_pipelines(self, timeout: float = 10.0) -> None:
        gen = self._gen
        gen.stop.set()
        for p in gen.pipelines:
            p.wake()
        deadline = time.monotonic() + timeout
        for name, t in gen.supervisors.items():
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline %s did not stop within %.0f s", name, timeout)

    @property
    def _supervisors(self) -> dict[str, threading.Thread]:
        return self._gen.supervisors

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        self._stop_pipelines()
        with self._cmd_cond:
            self._cmd_cond.notify_all()
        self._ack_queue.put(None)
        if self.status_socket is not None:
            self.status_socket.close()
        if self.localweb is not None:
            self.localweb.close()
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
        failing = self._emit_failing_since
        if failing is not None and now - failing > FAILED_UNHEALTHY_S:
            return False, f"outbox has accepted no event for {now - failing:.0f} s"
        gen = self._gen
        for p in gen.pipelines:
            t = gen.supervisors.get(p.name)
            if t is None or not t.is_alive():
                return False, f"pipeline {p.name} supervisor died"
            since = gen.failed_since.get(p.name)
            running = gen.running_since.get(p.name)
            if running is not None and now - running >= RUN_OK_S:
                continue  # running well again: the streak is over
            if since is not None and now - since > FAILED_UNHEALTHY_S:
                return False, f"pipeline {p.name} failing for {now - since:.0f} s"
        return True, "ok"

    def _status_line(self) -> str:
        link = "connected" if self.uplink.connected else "offline"
        return f"uplink {link}, outbox {len(self.outbox)}, {len(self.pipelines)} pipelines"

    # --- supervision -----------------------------------------------------------------------
    def _supervise(self, p: Pipeline, gen: _Generation) -> None:
        stop = gen.stop
        delays = Backoff(1.0, 60.0, floor_s=0.1)  # the one backoff: full jitter, + 0.1 s
        while not stop.is_set():
            # restored once it runs again (also a fault a previous generation raised before a
            # reload); a new failure raises a new fault
            self._restore_pipe_fault(p.name)
            started = time.monotonic()
            gen.running_since[p.name] = started
            try:
                p.set_state("starting")
                p.run(stop)
                if stop.is_set():
                    break
                raise RuntimeError("run() returned while the gateway was running")
            except Exception as exc:
                log.exception("pipeline %s failed", p.name)
                p.set_state("failed", f"{type(exc).__name__}: {exc}"[:200])
                now = time.monotonic()
                if now - started >= RUN_OK_S:
                    gen.failed_since.pop(p.name, None)  # it ran well for a while: a new streak
                gen.failed_since.setdefault(p.name, now)
                self._raise_pipe_fault(p.name, exc)
            finally:
                gen.running_since.pop(p.name, None)
                try:
                    p.close()
                except Exception:
                    log.exception("pipeline %s: close failed", p.name)
            if time.monotonic() - started > RUN_OK_S:
                delays.reset()
            stop.wait(delays.next())
        p.set_state("stopped")

    def _raise_pipe_fault(self, name: str, exc: Exception) -> None:
        """The `pipeline_failed` fault, once per failure streak; if it cannot be committed it
        is tried again at the next failure (the supervisor itself must never die of it)."""
        with self._lock_faults:
            if name in self._pipe_faults:
                return
            try:
                self.emit(
                    Kind.FAULT,
                    f"pipe/{name}",
                    {"active": True, "code": faults.PIPELINE_FAILED, "error": str(exc)[:80]},
                )
            except NotAccepted:
                return
            self._pipe_faults.add(name)

    def _restore_pipe_fault(self, name: str) -> None:
        with self._lock_faults:
            if name not in self._pipe_faults:
                return
            try:
                self.emit(
                    Kind.FAULT, f"pipe/{name}", {"active": False, "code": faults.PIPELINE_FAILED}
                )
            except NotAccepted:
                return  # still up; restored at the next attempt
            self._pipe_faults.discard(name)

    # --- messages in -----------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, properties: Any) -> None:
        """paho's network thread: sort, never block."""
        if topic == self.topics.ack:
            try:
                self._ack_queue.put_nowait(payload)
            except queue.Full:  # only an ack flood from a receiver gets here
                self._log_busy(logging.ERROR, "alarm acknowledgement queue full; one dropped")
            return
        if topic.startswith(self.topics.base + "/cmd/") and topic != self.topics.cmd_res:
            self._enqueue_command(topic.rsplit("/", 1)[-1], payload, properties)

    def _enqueue_command(self, name: str, payload: bytes, properties: Any) -> None:
        with self._cmd_cond:
            if name == "reload" and len(self._reload_waiters) < MAX_RELOAD_WAITERS:
                self._reload_waiters.append((payload, properties))
                if self._reload_queued:
                    self.command_stats["reloads_coalesced"] += 1
                    return  # the reload already waiting will answer this request too
                self._reload_queued = True
                self._cmd_items.append((name, b"", None))  # one marker, beyond the bound
                self._cmd_cond.notify()
                return
            if name != "reload" and len(self._cmd_items) < COMMAND_QUEUE:
                self._cmd_items.append((name, payload, properties))
                self._cmd_cond.notify()
                return
            self.command_stats["busy"] += 1
            queued = len(self._cmd_items)
        self._log_busy(logging.WARNING, "command queue full (%d queued): %s refused", queued, name)
        if self._busy_reply_allowed():
            self._reply(
                name,
                _request_id(payload),
                properties,
                {"ok": False, "error": f"busy: {queued} commands queued; try again later"},
            )

    def _busy_reply_allowed(self, per_s: int = 10) -> bool:
        now = time.monotonic()
        while self._busy_replies and now - self._busy_replies[0] > 1.0:
            self._busy_replies.popleft()
        if len(self._busy_replies) >= per_s:
            return False
        self._busy_replies.append(now)
        return True

    def _ack_worker(self) -> None:
        while True:
            payload = self._ack_queue.get()
            if payload is None:
                return
            try:
                self._handle_ack(payload)
            except Exception:
                log.exception("handling an alarm acknowledgement failed")

    def _command_worker(self) -> None:
        while True:
            with self._cmd_cond:
                while not self._cmd_items and not self._stop.is_set():
                    self._cmd_cond.wait()
                if self._stop.is_set():
                    return
                name, payload, properties = self._cmd_items.popleft()
                waiters: list[tuple[bytes, Any]] = []
                if name == "reload":
                    waiters, self._reload_waiters = self._reload_waiters, []
                    self._reload_queued = False
            try:
                if name == "reload":
                    self._handle_reload(waiters)
                else:
                    self._handle_command(name, payload, properties)
                self.command_stats["handled"] += 1
            except Exception:
                log.exception("handling command %s failed", name)

    def _handle_reload(self, waiters: list[tuple[bytes, Any]]) -> None:
        """One reload for every request that queued up behind the first one."""
        self.command_stats["reloads"] += 1
        reply: dict[str, Any]
        try:
            reply = {"ok": True, "result": {**self._cmd_reload({}), "requests": len(waiters)}}
        except Exception as exc:
            reply = {"ok": False, "error": _error_text(exc)}
        for payload, properties in waiters:
            self._reply("reload", _request_id(payload), properties, dict(reply))

    def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = _parse_object(payload)
            event_id = str(ack["id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed alarm acknowledgement ignored: %s", exc)
            return
        self.acks_received += 1
        supervisor = self.ack_supervisor
        if supervisor is not None:
            supervisor.on_ack(event_id, ack)
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
            reply["error"] = _error_text(exc)
        self._reply(name, reply.pop("id", None), properties, reply)

    def _reply(self, name: str, request_id: Any, properties: Any, body: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"cmd": name}
        if request_id is not None:
            reply["id"] = request_id
        reply.update(body)
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
        # NotAccepted propagates: the operator is answered ok=false, never a phantom event id
        event = self.emit(Kind.ALARM, str(args.get("source", "test")), {"cause": "test"})
        return {"event_id": event.id_hex}

    def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply every section that can change at run time, refuse the others and say which.

        The config file is re-read with its conf.d drop-ins. What applies live and what needs a
        restart is each section's (and field's) reload metadata (edge/confbase.py `on_reload`;
        the table in docs/config.md is generated from it). Pipelines restart only when something
        changed (including edited Modbus profile files); refused values keep running."""
        if self.config_path is None:
            raise ValueError("this gateway runs on built-in defaults; there is no file to reload")
        with self._lock:
            old = self.config
            outside_before = _outside_state(old)
            _forget_outside_state()  # re-read files a section names: an edited one is a change
            new = config_mod.load(self.config_path)  # ConfigError: answered, nothing changes
            outside_after = _outside_state(new)
            applied, refused, keep = config_mod.reload_plan(old, new)
            # an edited file a plugin section names (Modbus profiles) changes that section;
            # the section's reload metadata decides, as for a change in the config itself
            for name, state in outside_after.items():
                if state == outside_before.get(name) or name in applied or name in refused:
                    continue
                if type(getattr(new, name)).on_reload == "restart":
                    refused.append(name)
                    keep[name] = getattr(old, name)
                else:
                    applied.append(name)
            effective = new.model_copy(update=keep) if keep else new
            out: dict[str, Any] = {"reloaded": str(self.config_path), "applied": applied}
            if refused:
                out["restart_required_for"] = refused
            if not applied:
                out["pipelines"] = [p.name for p in self.pipelines]
                out["restarted"] = False
                return out
            birth_before = self._state_extra()
            restart = any(type(getattr(new, name)).restarts_pipelines for name in applied)
            if restart:
                self._stop_pipelines()
            self.config = effective
            if restart:
                if self.ack_supervisor is not None:
                    self.ack_supervisor.reconfigure(effective.alarm_ack)
                logging.getLogger().setLevel(effective.logging.level.upper())
                self._start_pipelines(self.build_pipelines())
            out["pipelines"] = [p.name for p in self.pipelines]
            out["restarted"] = restart
            if self._state_extra() != birth_before:  # new site or labels: say so at once
                out["state_published"] = self.uplink.publish_state()
        log.info("reload: applied %s; restart required for %s", applied, refused or "nothing")
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
                "dropped": self._dropped,  # events emit() refused (NotAccepted)
            },
            "commands": dict(self.command_stats),
            "acks_received": self.acks_received,
            "pipelines": {p.name: p.status() for p in self.pipelines},
        }

    def _state_extra(self) -> dict[str, Any]:
        """What the retained `state` carries besides online/time/gateway (docs/topics.md)."""
        from edge import __version__

        out = {
            "version": __version__,
            "site_type": self.config.gateway.site_type,
            "site": self.config.site.birth(),
            "labels": self.source_labels(),
        }
        install = self.install_result()
        if install is not None:
            out["install"] = install
        return out

    def install_result(self) -> dict[str, Any] | None:
        """What the first-boot installer wrote next to the config (`installed.json`: date,
        version, result), so that the fleet sees each gateway's install without SSH."""
        if self.config_path is None:
            return None
        try:
            doc = json.loads((Path(self.config_path).parent / "installed.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        return {k: str(doc[k])[:64] for k in ("installed_at", "version", "result") if k in doc}

    def source_labels(self) -> dict[str, str]:
        """Event source -> human label, from every plugin section (cameras, serial lines),
        sorted by source and bounded (MAX_BIRTH_LABELS; the rest is logged, not sent)."""
        from edge import plugins

        labels: dict[str, str] = {}
        for name, entry in plugins.registry().items():
            section = getattr(self.config, name, None)
            if section is None:
                continue  # a plugin that cannot be imported, and the config does not use it
            labels.update(entry.load().source_labels(section))
        if len(labels) > MAX_BIRTH_LABELS:
            log.warning(
                "%d labels configured; the birth message carries the first %d by source",
                len(labels),
                MAX_BIRTH_LABELS,
            )
        return dict(sorted(labels.items())[:MAX_BIRTH_LABELS])


def _error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def _request_id(payload: bytes) -> Any:
    """The request's `id`, echoed in the reply (None when there is none or it is unreadable)."""
    if not payload.strip():
        return None
    try:
        return _parse_object(payload).get("id")
    except (ValueError, TypeError):
        return None


def _outside_state(config: Config) -> dict[str, Any]:
    """Per plugin section, the state of the files it names (Modbus profiles), as loaded now."""
    from edge import plugins

    out: dict[str, Any] = {}
    for name, entry in plugins.registry().items():
        section = getattr(config, name, None)
        if section is None:
            continue
        hook = entry.load().reload_state
        if hook is not None:
            out[name] = plugins.import_target(hook)(section)
    return out


def _forget_outside_state() -> None:
    from edge import plugins

    for entry in plugins.registry().values():
        try:
            hook = entry.load().reload_forget
        except plugins.PluginError:
            continue
        if hook is not None:
            plugins.import_target(hook)()


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
