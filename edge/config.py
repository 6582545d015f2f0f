"""The gateway's one TOML config file: schema, loading and errors that say file, line, key and fix.

Reference: docs/config.md. This module owns the gateway's own sections and loading; each
pipeline plugin owns its section (edge/plugins.py, docs/plugins.md): `Config` is `CoreConfig`
plus one field per registered plugin, assembled on first use, so this module imports no plugin.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from edge.confbase import AbsPath, Section, TopicSegment
from edge.topics import DEFAULT_PREFIX, GatewayTopics

DEFAULT_PATH = Path("/etc/wardgate/config.toml")

M = TypeVar("M", bound=Section)

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


class CoreConfig(Section):
    """The gateway's own sections; `Config` adds one field per pipeline plugin."""

    gateway: GatewaySection
    uplink: UplinkSection = UplinkSection()
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()
    test_source: TestSourceSection = TestSourceSection()
    alarm_ack: AlarmAckSection = AlarmAckSection()
    logging: LoggingSection = LoggingSection()

    @property
    def topics(self) -> GatewayTopics:
        g = self.gateway
        return GatewayTopics(self.uplink.topic_prefix, g.district, g.ward, g.id)


def _broken_plugin(message: str) -> Any:
    def refuse(value: Any) -> Any:
        raise ValueError(message)

    return BeforeValidator(refuse)


@functools.lru_cache(maxsize=1)
def config_model() -> type[CoreConfig]:
    """`CoreConfig` plus each registered plugin's section (edge/plugins.py), built once.

    A plugin that cannot be imported does not stop a gateway whose config does not use it: its
    section then fails validation, at its file:line, with what to install."""
    from edge import plugins

    fields: dict[str, Any] = {}
    for name, entry in plugins.registry().items():
        try:
            model = entry.load().section_model()
        except (plugins.PluginError, ImportError, AttributeError) as exc:
            why = (
                str(exc)
                if isinstance(exc, plugins.PluginError)
                else (
                    f"pipeline plugin [{name}] ({entry.target}, package {entry.package!r}): its "
                    f"section model cannot be loaded: {exc}"
                )
            )
            fields[name] = (Annotated[Any, _broken_plugin(why)], None)
            continue
        fields[name] = (model, model())
    return create_model(  # type: ignore[call-overload,no-any-return]
        "Config", __base__=CoreConfig, __module__=__name__, **fields
    )


def _model(path: Path | str) -> type[CoreConfig]:
    from edge.plugins import PluginError

    try:
        return config_model()
    except PluginError as exc:  # two plugins claim a section, or one claims a core section
        raise ConfigError(path, [f"{path}: {exc}"]) from None


def __getattr__(name: str) -> Any:
    if name == "Config":  # `from edge.config import Config`: the assembled model
        return config_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(Exception):
    """Every problem found in one config file, each as `file:line: key: what is wrong`."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


#: A config file is a few KB; anything past this is the wrong file (or /dev/zero).
MAX_BYTES = 1 << 20
#: Arrays and tables nested deeper than this are no wardgate config (ours reach about 8).
MAX_DEPTH = 32
#: Values echoed in a problem are cut to about this many characters.
ECHO_CHARS = 60


@dataclasses.dataclass
class Checked:
    """What `check-config` reports: the config if it is valid, every problem, every warning."""

    config: CoreConfig | None
    problems: list[str]
    warnings: list[str]


def load(path: Path | str) -> CoreConfig:
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
    cfg: CoreConfig | None = None
    problems: list[str] = []
    warnings: list[str] = []
    try:
        cfg = validate_model(_model(path), data, path, text)
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


def parse(text: str, path: Path | str = "<config>") -> CoreConfig:
    return parse_model(_model(path), text, path)


def from_dict(data: dict[str, Any], path: Path | str = "<config>", text: str = "") -> CoreConfig:
    return validate_model(_model(path), data, path, text)


def parse_model(model: type[M], text: str, path: Path | str) -> M:
    """TOML text into any Section model (the gateway config, the fleet settings, ...)."""
    return validate_model(model, _toml(text, path), path, text)


def _toml(text: str, path: Path | str) -> dict[str, Any]:
    text = text.removeprefix(BOM)  # a UTF-8 byte-order mark (Windows editors) is ignored
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(path, [f"{where}: not valid TOML: {_clip(str(exc), 200)}"]) from None
    except RecursionError:
        line = _deep_line(text)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(path, [f"{where}: {_TOO_DEEP}"]) from None


BOM = "\ufeff"
_TOO_DEEP = f"arrays or tables nested more than {MAX_DEPTH} levels deep: not a wardgate config"


def validate_model(model: type[M], data: dict[str, Any], path: Path | str, text: str = "") -> M:
    """Validate; on failure a ConfigError with every problem as `file:line: key: reason`."""
    text = text.removeprefix(BOM)
    deep = _too_deep(data)
    if deep is not None:
        line = _KeyLines(text).find(deep)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(path, [f"{where}: {_dotted(deep[:6])}: {_TOO_DEEP}"])
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
    except RecursionError:  # _too_deep keeps this away; never a 3,000-line traceback
        raise ConfigError(path, [f"{path}: {_TOO_DEEP}"]) from None


def _too_deep(data: Any) -> list[Any] | None:
    """The key path of the first value nested deeper than MAX_DEPTH, or None (no recursion)."""
    stack: list[tuple[Any, list[Any]]] = [(data, [])]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            return loc
        if isinstance(value, dict):
            stack.extend((v, [*loc, k]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*loc, i]) for i, v in enumerate(value))
    return None


def _deep_line(text: str) -> int | None:
    """Where brackets first nest deeper than MAX_DEPTH (strings are not skipped: a hint only)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        for char in line:
            depth += 1 if char in "[{" else -1 if char in "]}" else 0
            if depth > MAX_DEPTH:
                return number
    return None


def _line_of(problem: str) -> int:
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 0


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("function-after",))


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        part = part if isinstance(part, int) else _clip(str(part), 40)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clip(text: str, limit: int = ECHO_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"


def _echo(value: Any) -> str:
    """A value as the user wrote it, cut to about ECHO_CHARS characters."""
    return _clip(repr(value))


#: strict types: what a key wanted, for inputs of another TOML type
_WANTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string (in quotes)",
}


def _explain(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against docs/config.md)"
    if kind == "missing":
        return "required key is missing"
    given = err.get("input")
    scalar = given is not None and not isinstance(given, dict | list)
    if kind in _WANTED and scalar:
        hint = ": write it without quotes" if isinstance(given, str) else ""
        return f"must be {_WANTED[kind]}, not {_toml_type(given)}{hint} (got {_echo(given)})"
    if kind == "finite_number":
        return f"must be a finite number (got {_echo(given)})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if scalar:
        full = repr(given)
        if full in msg:  # the message already quotes the value: once, cut short
            return _clip(msg.replace(full, _echo(given)), 300)
        return f"{_clip(msg, 300)} (got {_echo(given)})"
    return _clip(msg, 300)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


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
