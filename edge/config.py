"""The gateway's one TOML config file: schema, loading and errors that say file, line, key and fix.

Reference: docs/config.md. Each pipeline owns its own section model (edge/vision/config.py,
sensor_drivers/config.py); this module assembles them. Loading any Section from TOML with
file:line errors is edge/confbase.py's (ConfigError, parse_model), shared with the plugins.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge.confbase import (
    BOM,
    MAX_BYTES,
    AbsPath,
    ConfigError,
    Section,
    TopicSegment,
    _clip,
    _KeyLines,
    _toml,
    parse_model,
    validate_model,
)
from edge.vision.config import VisionConfig
from protocol.topics import DEFAULT_PREFIX, GatewayTopics
from sensor_drivers.config import SerialConfig

#: MQTT v5 four-byte intervals (session expiry, message expiry): 0xFFFFFFFF at most.
U32 = 0xFFFF_FFFF
#: EN 54-21: a fault within 100 s of an alarm the receiving centre has not acknowledged.
EN54_ACK_S = 100.0
MAX_ACK_S = 3600.0


class GatewaySection(Section):
    id: TopicSegment
    district: TopicSegment
    ward: TopicSegment
    site_type: Literal["police_post", "fire_point", "demo"] = "demo"


class TLSSection(Section):
    ca: AbsPath = Field(description="CA certificate (PEM) that signed the broker's certificate")
    cert: AbsPath | None = Field(None, description="client certificate (PEM)")
    key: AbsPath | None = Field(None, description="client private key (PEM), mode 0600")
    server_name: str | None = Field(
        None, min_length=1, max_length=253, description="expected broker name, if not `host`"
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both `cert` and `key` for a client certificate, or neither")
        return self


class UplinkSection(Section):
    host: str = Field("localhost", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    tls: TLSSection | None = None
    username: str | None = Field(None, min_length=1, max_length=256)
    password: str | None = Field(None, repr=False, min_length=1, max_length=1024)
    password_file: AbsPath | None = None
    client_id: str | None = Field(
        None, min_length=1, max_length=256, description="default: the gateway id"
    )
    keepalive_s: int = Field(30, ge=2, le=65535)
    session_expiry_s: int = Field(7 * 86400, ge=0, le=U32)
    topic_prefix: str = Field(DEFAULT_PREFIX, min_length=1, max_length=256)
    format: Literal["cbor", "json"] = "cbor"
    max_inflight: int = Field(64, ge=1, le=65535)
    backoff_initial_s: float = Field(0.5, ge=0.01, le=60.0)
    backoff_max_s: float = Field(
        10.0,
        ge=0.01,
        le=300.0,
        description="reconnect delay cap: an alarm raised in an outage waits at most this",
    )
    event_expiry_s: int = Field(
        86400, ge=0, le=U32, description="MQTT message expiry for non-critical events; 0 = none"
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> UplinkSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give `password` or `password_file`, not both")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_initial_s ({self.backoff_initial_s}) must not exceed backoff_max_s "
                f"({self.backoff_max_s})"
            )
        return self


class OutboxSection(Section):
    path: AbsPath = Path("/var/lib/wardgate/outbox.sqlite3")
    max_events: int = Field(1_000_000, ge=10, le=100_000_000)  # a day offline at ~10 ev/s
    fsync: Literal["critical", "full", "normal"] = Field(
        "critical",
        description="critical: alarms and faults survive a power cut once accepted; full: all",
    )
    disk_budget_mb: int = Field(
        512,
        ge=4,
        le=1_048_576,
        description="most disk the outbox uses (database + WAL + reserve); past it, eviction",
    )
    reserve_kb: int = Field(
        8192,
        ge=64,
        le=1_048_576,
        description="preallocated file released on a full filesystem so eviction, deletes and "
        "checkpoints can run (capped at 1/8 of the budget and of the filesystem)",
    )


class HealthSection(Section):
    heartbeat_s: float = Field(30.0, ge=0.1, le=86400.0)
    watchdog: bool = True


class TestSourceSection(Section):
    """A synthetic pipeline: readings every `interval_s`, for commissioning and demos."""

    enabled: bool = False
    interval_s: float = Field(5.0, ge=0.0001, le=86400.0)  # benches drive it at 1,400 ev/s
    alarm_every_s: float = Field(
        0.0, ge=0, le=7 * 86400.0, description="also raise a test alarm; 0 = never"
    )


class AlarmAckSection(Section):
    """EN 54-21 style supervision of the path to the receiving centre."""

    enabled: bool = True
    allow_over_100_s: bool = Field(
        False, description="let timeout_s exceed EN 54-21's 100 s (up to 3600 s); off: refused"
    )
    timeout_s: float = Field(
        EN54_ACK_S, ge=0.1, description="fault when an alarm is unacked this long (<= 100 s)"
    )
    output: AbsPath | None = Field(
        None, description="value file set to 1 while a transmission fault stands (LED/GPIO)"
    )

    @field_validator("timeout_s")
    @classmethod
    def _en54_limit(cls, value: float, info: ValidationInfo) -> float:
        if value > EN54_ACK_S and not info.data.get("allow_over_100_s", False):
            raise ValueError(
                f"{value:g} s exceeds EN 54-21's {EN54_ACK_S:g} s from an unacknowledged alarm "
                "to a fault; if this site may wait longer, also set allow_over_100_s = true "
                f"(then at most {MAX_ACK_S:g} s)"
            )
        if value > MAX_ACK_S:
            raise ValueError(f"at most {MAX_ACK_S:g} s, even with allow_over_100_s")
        return value


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


@dataclasses.dataclass
class Checked:
    """What `check-config` reports: the config if it is valid, every problem, every warning."""

    config: Config | None
    problems: list[str]
    warnings: list[str]


def load(path: Path | str) -> Config:
    """The config at `path`, or a ConfigError with every problem (file checks: `check`)."""
    return parse(read_text(path), path)


def check(path: Path | str, *, files: bool = True) -> Checked:
    """Everything `wardgate check-config` checks, all problems at once, in file order.

    files: also check the files the config names (password_file, TLS CA/cert/key) as the user
    running this would open them: they exist, are regular files, readable, and secrets are not
    readable by group or others (a warning). Off for a config checked away from its gateway.
    """
    try:
        text = read_text(path)
        data = _toml(text, path)
    except ConfigError as exc:
        return Checked(None, exc.problems, [])
    cfg: Config | None = None
    problems: list[str] = []
    warnings: list[str] = []
    try:
        cfg = validate_model(Config, data, path, text)
    except ConfigError as exc:
        problems += exc.problems
    if files:
        file_errors, warnings = file_problems(data, path, text)
        problems += file_errors
    problems.sort(key=_line_of)
    return Checked(None if problems else cfg, problems, warnings)


def read_text(path: Path | str) -> str:
    """A config file's text; ConfigError (one short line) if it cannot be one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            path, [f"{path}: file not found (create it, see docs/config.md)"]
        ) from None
    except IsADirectoryError:
        raise ConfigError(path, [f"{path}: is a directory, not a file"]) from None
    except PermissionError:
        raise ConfigError(path, [f"{path}: cannot be read: permission denied"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot be read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(path, [f"{path}: larger than {MAX_BYTES // 1024} KiB: not a config file"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(path, [f"{path}:1: UTF-16 text: save the file as UTF-8"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            path,
            [f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): save it as UTF-8"],
        ) from None


def parse(text: str, path: Path | str = "<config>") -> Config:
    return parse_model(Config, text, path)


def from_dict(data: dict[str, Any], path: Path | str = "<config>", text: str = "") -> Config:
    return validate_model(Config, data, path, text)


def _line_of(problem: str) -> int:
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 0


# --- files the config names -----------------------------------------------------------------

#: (key path, secret): files `check-config` opens as the running user (the unit runs it as the
#: service user, so "readable" means readable by the gateway)
NAMED_FILES: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("uplink", "password_file"), True),
    (("uplink", "tls", "ca"), False),
    (("uplink", "tls", "cert"), False),
    (("uplink", "tls", "key"), True),
)


def file_problems(
    data: dict[str, Any], path: Path | str, text: str = ""
) -> tuple[list[str], list[str]]:
    """Problems (errors) and warnings about the files a config names, from the raw TOML data,
    so that they are reported together with every schema problem."""
    lines = _KeyLines(text.removeprefix(BOM))
    errors: list[str] = []
    warnings: list[str] = []
    for loc, secret in NAMED_FILES:
        value: Any = data
        for part in loc:
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            continue  # absent, or a schema problem reported already
        file = Path(value.strip())
        if not file.is_absolute():
            continue
        error, warning = _check_file(file, secret)
        line = lines.find(list(loc))
        where = f"{path}:{line}" if line else str(path)
        if error:
            errors.append(f"{where}: {'.'.join(loc)}: {error}")
        if warning:
            warnings.append(f"{where}: {'.'.join(loc)}: warning: {warning}")
    return errors, warnings


def _check_file(file: Path, secret: bool) -> tuple[str | None, str | None]:
    shown = _clip(str(file), 200)
    try:
        st = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        return f"file not found: {shown}", None
    except OSError as exc:
        return f"cannot be reached: {shown}: {exc.strerror or exc}", None
    if stat.S_ISDIR(st.st_mode):
        return f"is a directory, not a file: {shown}", None
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file: {shown}", None
    try:
        with open(file, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot be read by this user ({_user()}): {shown}: {exc.strerror or exc}", None
    if st.st_size == 0:
        return f"is empty: {shown}", None
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        return None, (
            f"holds a secret but is readable by {'others' if mode & 0o007 else 'its group'} "
            f"(mode {mode:04o}); run `chmod 600 {shown}`"
        )
    return None, None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def read_password(uplink: UplinkSection) -> str | None:
    if uplink.password_file is not None:
        return uplink.password_file.read_text(encoding="utf-8").strip()
    return uplink.password
