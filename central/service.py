"""`wardgate central run`: the operations center in one process.

store (SQLite or PostgreSQL) <- ingest (MQTT) ; console (HTTP, server push) ; escalation timer
-> webhook and SIA DC-09 hand-over. Each part has one job; `LiveState` ties what the screens see.

Exit codes: 0 stopped, 3 config error, 4 the broker refused our credentials before we were ever
connected (a wrong password must not look like a quiet night).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from central.config import CentralConfig
from central.ingest import Ingest, IngestOptions
from central.live import LiveState
from central.store import Ingested, Store
from central.webhook import Webhook
from protocol.events import Event, Kind, now_ms

log = logging.getLogger("wardgate.central")

EXIT_REFUSED = 4


class CentralService:
    def __init__(self, config: CentralConfig, *, config_dir: Path | None = None) -> None:
        self.config = config
        self.config_dir = config_dir or Path.cwd()
        self.live = LiveState()
        self.store = Store(config.store.url, handover_targets=("dc09",) if config.dc09.host else ())
        self.webhook = (
            Webhook(config.webhook.url, self.live, config.webhook.timeout_s)
            if config.webhook.url
            else None
        )
        self.dc09 = self._dc09()
        self.ingest = Ingest(
            self.store,
            self.live,
            IngestOptions(
                endpoint=config.endpoint(),
                prefix=config.broker.prefix,
                districts=config.broker.districts,
                group=config.broker.group,
                supervision_s=config.alarms.supervision_s,
            ),
            on_incident=self._on_new_event,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server: Any = None
        self.exit_code = 0

    # --- parts -----------------------------------------------------------------------------
    def _dc09(self) -> Any:
        c = self.config.dc09
        if not c.host:
            return None
        from central.dc09 import Dc09Forwarder, read_key_file

        key = read_key_file(c.key_file) if c.key_file is not None else None
        return Dc09Forwarder(
            c.host,
            c.port,
            c.account,
            key_hex=key,
            receiver=c.receiver,
            line=c.line,
            on_result=lambda event_id, outcome: self.store.handover_result(
                event_id, "dc09", outcome
            ),
        )

    def _on_new_event(self, site: str, event: Event, result: Ingested) -> None:
        """A new event was stored: hand it over (webhook, DC-09). Runs on ingest's writer."""
        wanted = result.incident_new or event.kind is Kind.ALARM
        if self.webhook is not None and "incident" in self.config.webhook.events and wanted:
            self.webhook.post(
                {
                    "what": "incident" if result.incident_new else "alarm",
                    "site": site,
                    "incident_id": result.incident_id,
                    "event": event.to_json_dict(),
                }
            )
        if self.dc09 is not None:
            self._forward_dc09(site, event)

    def _forward_dc09(self, site: str, event: Event) -> None:
        """Fire alarms (and test alarms) and faults, raised and cleared, to the ARC's desk."""
        if event.kind is Kind.ALARM:
            kind, code = "alarm", str(event.data.get("cause") or "alarm")
        elif event.kind is Kind.SMOKE:
            kind, code = "alarm", "camera smoke"
        elif event.kind is Kind.FAULT:
            active = event.data.get("active") is True
            kind, code = ("fault" if active else "fault_restore"), str(event.data.get("code"))
        else:
            return
        self.dc09.submit(kind, code, f"{site} {event.source}", event.time_ms, event.id_hex)

    def _status_loop(self) -> None:
        """This instance's broker link and counters into the store, every 2 s: screens in
        other processes (`wardgate alarms`, a second console) show them too."""
        instance = self.ingest.opts.endpoint.client_id
        while True:
            snap = self.live.snapshot()
            broker = snap["broker"]
            try:
                self.store.set_status(
                    instance, broker["connected"], broker["detail"], broker["since_ms"],
                    snap["counts"],
                )  # fmt: skip
            except Exception as exc:
                log.debug("status not stored: %s", exc)
            if self._stop.wait(2.0):
                return

    def _escalate_loop(self) -> None:
        after = self.config.alarms.escalate_after_s
        while not self._stop.wait(1.0):
            try:
                due = self.store.escalate_due(now_ms(), after)
            except Exception as exc:
                log.error("escalation check failed: %s", exc)
                continue
            for incident in due:
                log.warning(
                    "escalation: incident %s (%s at %s) not accepted within %.0f s",
                    incident["id"], incident["category"], incident["site"], after,
                )  # fmt: skip
                self.live.count("escalations")
                if self.webhook is not None and "escalation" in self.config.webhook.events:
                    self.webhook.post({"what": "escalation", "after_s": after, **incident})
            if due:
                self.live.changed()

    def _watch_refusal(self) -> None:
        """Credentials refused before we were ever connected: stop, exit non-zero."""
        while not self._stop.wait(0.2):
            if self.ingest.refused and not self.ingest.ever_connected:
                log.error(
                    "the broker refused our credentials: %s; stopping (exit %d)",
                    self.ingest.refused,
                    EXIT_REFUSED,
                )
                self.exit_code = EXIT_REFUSED
                self.request_stop()
                return

    def secret_key(self) -> bytes:
        path = self.config.console.secret_key_file or (self.config_dir / "console-secret.key")
        try:
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            key = secrets.token_bytes(32)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            return key

    def app(self) -> Any:
        from central.console.app import create_app
        from central.console.settings import ConsoleSettings

        c = self.config.console
        settings = ConsoleSettings(
            secret_key=self.secret_key(),
            session_minutes=c.session_minutes,
            escalate_after_s=self.config.alarms.escalate_after_s,
            target_s=self.config.alarms.target_s,
            tile_url=c.tile_url,
            tile_attribution=c.tile_attribution,
            https_only=c.tls_cert is not None,
            title=c.title,
        )
        app = create_app(self.store, self.live, settings)
        app.state.snapshots = self.ingest.snapshots
        return app

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, *, console: bool = True) -> None:
        if self.webhook is not None:
            self.webhook.start()
        if self.dc09 is not None:
            self.dc09.start()
            self.live.extra["dc09"] = self.dc09.status  # read at each snapshot
            owed = self.store.handover_pending("dc09")
            if owed:
                log.warning("DC-09: %d hand-overs owed from before the restart; sending", len(owed))
            for site, event in owed:
                self._forward_dc09(site, event)
        self.ingest.start()
        loops = (
            (self._escalate_loop, "escalation"),
            (self._watch_refusal, "refusal"),
            (self._status_loop, "status"),
        )
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if console:
            import uvicorn

            c = self.config.console
            cfg = uvicorn.Config(
                self.app(),
                host=c.bind,
                port=c.port,
                log_level="warning",
                ssl_certfile=str(c.tls_cert) if c.tls_cert else None,
                ssl_keyfile=str(c.tls_key) if c.tls_key else None,
                timeout_graceful_shutdown=2,
            )
            self.server = uvicorn.Server(cfg)
            self.server.install_signal_handlers = lambda: None  # the CLI owns the signals
            t = threading.Thread(target=self.server.run, name="console", daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def console_port(self) -> int | None:
        """The console's bound port (useful with port = 0), once it is listening."""
        if self.server is None or not self.server.started:
            return None
        return self.server.servers[0].sockets[0].getsockname()[1]

    def wait_console(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.console_port
            if port:
                return port
            time.sleep(0.05)
        raise TimeoutError("the console did not start listening")

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, duration: float = 0) -> int:
        deadline = time.monotonic() + duration if duration else None
        while not self._stop.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self.exit_code

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.should_exit = True
        self.ingest.stop()
        if self.webhook is not None:
            self.webhook.stop()
        if self.dc09 is not None:
            self.dc09.stop()
        for t in self._threads:
            t.join(5)
        self.store.close()
