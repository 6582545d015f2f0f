"""`central.toml`: the operations center's settings (docs/console.md has the reference).

Same conventions as the gateway's config (edge/confbase.py): strict types, unknown keys are
errors, every problem reported as `file:line: key: what is wrong`. Every key has a default, so
an empty file (or none) runs the embedded setup: SQLite next to the working directory, the broker
on localhost, the console on 127.0.0.1:8080.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from edge.confbase import AnyPath, ConfigError, Pair, Section, TopicSegment, parse_model
from protocol import mqtt as policy
from protocol.topics import DEFAULT_PREFIX

#: a district to take in, or "+" for every district the account may read
District = Annotated[str, Field(pattern=r"^(\+|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")]


class BrokerSection(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_file: AnyPath | None = None
    ca: AnyPath | None = Field(None, description="CA certificate: enables TLS")
    cert: AnyPath | None = None
    key: AnyPath | None = None
    server_name: str | None = None
    prefix: str = DEFAULT_PREFIX
    districts: Annotated[tuple[District, ...], Pair] = ("+",)
    # `$share/<group>/...`: every ingest instance of one operations center uses the same group;
    # each instance needs its own broker account (the broker maps account = client id)
    group: TopicSegment = "ingest"
    client_id: str = Field("", description='"" = ingest-<host>-<pid>, unique per process')
    session_expiry_s: int = Field(86400, ge=0, le=7 * 86400)
    keepalive_s: int = Field(10, ge=2, le=600)


class StoreSection(Section):
    url: str = Field(
        "sqlite:///wardgate-central.db",
        description="sqlite:///PATH (embedded) or postgresql://user@host:port/db",
    )


class ConsoleSection(Section):
    bind: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls_cert: AnyPath | None = None
    tls_key: AnyPath | None = None
    secret_key_file: AnyPath | None = Field(
        None, description="session-signing key; made (0600) next to the store if absent"
    )
    session_minutes: int = Field(12 * 60, ge=5, le=7 * 24 * 60)
    title: str = "Fire brigade alarm console"
    tile_url: str | None = Field(None, description="the city's map tiles: .../{z}/{x}/{y}.png")
    tile_attribution: str = ""


class AlarmsSection(Section):
    escalate_after_s: float = Field(60.0, ge=5, le=3600)
    target_s: float = Field(90.0, ge=5, le=3600)
    supervision_s: float = Field(90.0, ge=10, le=86400)


class WebhookSection(Section):
    url: str | None = None
    # what is posted: new incidents (alarms, faults) and escalations
    events: Annotated[tuple[Literal["incident", "escalation"], ...], Pair] = (
        "incident",
        "escalation",
    )
    timeout_s: float = Field(10.0, gt=0, le=120)


class Dc09Section(Section):
    host: str | None = Field(None, description="the alarm receiving centre; none = off")
    port: int = Field(0, ge=0, le=65535)
    account: str = Field("0000", pattern=r"^[0-9A-Fa-f]{3,16}$")
    receiver: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{1,6}$")
    line: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{1,6}$")
    key_file: AnyPath | None = Field(None, description="AES key, hex, 32/48/64 digits")


class CentralConfig(Section):
    broker: BrokerSection = BrokerSection()
    store: StoreSection = StoreSection()
    console: ConsoleSection = ConsoleSection()
    alarms: AlarmsSection = AlarmsSection()
    webhook: WebhookSection = WebhookSection()
    dc09: Dc09Section = Dc09Section()

    def endpoint(self) -> policy.Endpoint:
        b = self.broker
        tls = policy.Tls(b.ca, b.cert, b.key, b.server_name) if b.ca is not None else None
        return policy.Endpoint(
            host=b.host,
            port=b.port,
            tls=tls,
            username=b.username,
            password_file=b.password_file,
            client_id=b.client_id or f"ingest-{socket.gethostname()}-{os.getpid()}",
            keepalive_s=b.keepalive_s,
            clean_start=False,
            session_expiry_s=b.session_expiry_s,
            backoff_initial_s=0.5,
            backoff_max_s=10.0,
            setting="broker",
        )


def load(path: Path | None) -> CentralConfig:
    """The config at `path` (every problem as a ConfigError), or the defaults for None."""
    if path is None:
        return CentralConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"{path}: cannot read it: {exc}"]) from None
    return parse_model(CentralConfig, text, path)
