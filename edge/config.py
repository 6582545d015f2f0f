"""The gateway's one TOML config file: schema, loading and errors that say file, line, key and fix.

Reference: docs/config.md. Each pipeline owns its own section model (edge/vision/config.py,
sensor_drivers/config.py); this module assembles them and owns loading.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator

from edge.confbase import Section, TopicSegment
from edge.topics import DEFAULT_PREFIX, GatewayTopics
from edge.vision.config import VisionConfig
from sensor_drivers.config import SerialConfig

DEFAULT_PATH = Path("/etc/wardgate/config.toml")

M = TypeVar("M", bound=Section)

PositiveFloat = Annotated[float, Field(gt=0)]


class GatewaySection(Section):
    id: TopicSegment
    district: TopicSegment
    ward: TopicSegment
    site_type: Literal["police_post", "fire_point", "demo"] = "demo"


class TLSSection(Section):
    ca: Path = Field(description="CA certificate (PEM) that signed the broker's certificate")
    cert: Path | None = Field(None, description="client certificate (PEM)")
    key: Path | None = Field(None, description="client private key (PEM), mode 0600")
    server_name: str | None = Field(None, description="expected broker name, if not `host`")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both `cert` and `key` for a client certificate, or neither")
        return self


class UplinkSection(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    tls: TLSSection | None = None
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_file: Path | None = None
    client_id: str | None = Field(None, description="default: the gateway id")
    keepalive_s: int = Field(30, ge=2, le=65535)
    session_expiry_s: int = Field(7 * 86400, ge=0)
    topic_prefix: str = DEFAULT_PREFIX
    format: Literal["cbor", "json"] = "cbor"
    max_inflight: int = Field(64, ge=1, le=65535)
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = Field(
        10.0, description="reconnect delay cap: an alarm raised in an outage waits at most this"
    )
    event_expiry_s: int = Field(
        86400, ge=0, description="MQTT message expiry for non-critical events; 0 = none"
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> UplinkSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give `password` or `password_file`, not both")
        return self


class OutboxSection(Section):
    path: Path = Path("/var/lib/wardgate/outbox.sqlite3")
    max_events: int = Field(200_000, ge=10)
    fsync: Literal["critical", "full", "normal"] = Field(
        "critical",
        description="critical: alarms and faults survive a power cut once accepted; full: all",
    )


class HealthSection(Section):
    heartbeat_s: PositiveFloat = 30.0
    watchdog: bool = True


class TestSourceSection(Section):
    """A synthetic pipeline: readings every `interval_s`, for commissioning and demos."""

    enabled: bool = False
    interval_s: PositiveFloat = 5.0
    alarm_every_s: float = Field(0.0, ge=0, description="also raise a test alarm; 0 = never")


class AlarmAckSection(Section):
    """EN 54-21 style supervision of the path to the receiving centre."""

    enabled: bool = True
    timeout_s: PositiveFloat = Field(100.0, description="fault when an alarm is unacked this long")
    output: Path | None = Field(
        None, description="value file set to 1 while a transmission fault stands (LED/GPIO)"
    )


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Section):
    gateway: GatewaySection
    uplink: UplinkSection = UplinkSection()
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()
    test_source: TestSourceSection = TestSourceSection()
    alarm_ack: AlarmAckSection = AlarmAckSection()
    logging: LoggingSection = LoggingSection()
    vision: VisionConfig = VisionConfig()
    serial: SerialConfig = SerialConfig()

    @property
    def topics(self) -> GatewayTopics:
        g = self.gateway
        return GatewayTopics(self.uplink.topic_prefix, g.district, g.ward, g.id)


class ConfigError(Exception):
    """Every problem found in one config file, each as `file:line: key: what is wrong`."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


def load(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, [f"{path}: file not found (create it, see docs/config.md)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"{path}: cannot read: {exc}"]) from None
    return parse(text, path)


def parse(text: str, path: Path | str = "<config>") -> Config:
    return parse_model(Config, text, path)


def from_dict(data: dict[str, Any], path: Path | str = "<config>", text: str = "") -> Config:
    return validate_model(Config, data, path, text)


def parse_model(model: type[M], text: str, path: Path | str) -> M:
    """TOML text into any Section model (the gateway config, the fleet settings, ...)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(path, [f"{where}: not valid TOML: {exc}"]) from None
    return validate_model(model, data, path, text)


def validate_model(model: type[M], data: dict[str, Any], path: Path | str, text: str = "") -> M:
    """Validate; on failure a ConfigError with every problem as `file:line: key: reason`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = _KeyLines(text)
        problems = []
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if not _is_union_tag(p)]
            key = _dotted(loc)
            line = lines.find(loc)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {key or '(top level)'}: {_explain(err)}")
        raise ConfigError(path, problems) from None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("function-after",))


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against docs/config.md)"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    given = err.get("input")
    if given is not None and not isinstance(given, dict | list):
        return f"{msg} (got {given!r})"
    return msg


class _KeyLines:
    """Maps a key path to the line that sets it, by reading the TOML text itself.

    tomllib keeps no positions; this covers what people write in config files: [tables],
    [[arrays of tables]], `key = value` and dotted keys. It falls back to the nearest table.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"']+)\s*=")

    def __init__(self, text: str) -> None:
        self.where: dict[tuple[Any, ...], int] = {}
        counters: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                names = tuple(_split_key(header.group(2)))
                if header.group(1) == "[[":
                    index = counters.get(names, -1) + 1
                    counters[names] = index
                    table = self._resolve(names, counters) + (index,)
                else:
                    table = self._resolve(names, counters)
                self.where.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                full = table + tuple(_split_key(key.group(1)))
                self.where.setdefault(full, number)

    @staticmethod
    def _resolve(names: tuple[str, ...], counters: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
        """[a.b] inside the latest [[a]] element becomes (a, i, b)."""
        out: list[Any] = []
        for i, name in enumerate(names):
            out.append(name)
            prefix = names[: i + 1]
            if prefix in counters and i < len(names) - 1:
                out.append(counters[prefix])
        return tuple(out)

    def find(self, loc: list[Any]) -> int | None:
        path = tuple(loc)
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return None


def _split_key(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def read_password(uplink: UplinkSection) -> str | None:
    if uplink.password_file is not None:
        return uplink.password_file.read_text(encoding="utf-8").strip()
    return uplink.password
