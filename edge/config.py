"""The gateway's one TOML config file: schema, loading and errors that say file, line, key and fix.

Reference: docs/config.md. This module owns the gateway's own sections and loading; each
pipeline plugin owns its section (edge/plugins.py, docs/plugins.md): `Config` is `CoreConfig`
plus one field per registered plugin, assembled on first use, so this module imports no plugin.
Loading any Section from TOML with file:line errors is edge/confbase.py's (ConfigError,
parse_model), shared with the plugins; merging the layers is edge/layering.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from edge.confbase import (
    _TOO_DEEP,
    BOM,
    MAX_BYTES,
    AbsPath,
    ConfigError,
    Note,
    Section,
    TextLine,
    TopicSegment,
    _clip,
    _dotted,
    _KeyLines,
    _origins_of,
    _toml,
    _too_deep,
    _where,
    field_reload,
    validate_model,
)
from edge.layering import CURRENT_VERSION, Layer, Origins, VersionError, migrate
from protocol.topics import DEFAULT_PREFIX, GatewayTopics

#: drop-ins next to the main file (`/etc/wardgate/conf.d/*.toml`), merged over it by name order
DROP_IN_DIR = "conf.d"

log = logging.getLogger("wardgate.config")

#: MQTT v5 four-byte intervals (session expiry, message expiry): 0xFFFFFFFF at most.
U32 = 0xFFFF_FFFF
#: EN 54-21: a fault within 100 s of an alarm the receiving centre has not acknowledged.
EN54_ACK_S = 100.0
MAX_ACK_S = 3600.0


class GatewaySection(Section):
    on_reload: ClassVar = "restart"
    reload_note: ClassVar[str] = "the gateway's identity and topics"

    id: TopicSegment
    district: TopicSegment
    ward: TopicSegment
    site_type: Literal["police_post", "fire_point", "demo"] = "demo"


class TLSSection(Section):
    on_reload: ClassVar = "restart"

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
    on_reload: ClassVar = "restart"
    reload_note: ClassVar[str] = "the broker connection"

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
    on_reload: ClassVar = "restart"
    reload_note: ClassVar[str] = "the open outbox database"

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
    status_socket: AbsPath | None = Field(
        None,
        json_schema_extra={"on_reload": "restart"},
        description="unix socket `wardgate status` asks; default: status.sock next to the outbox",
    )


class TestSourceSection(Section):
    """A synthetic pipeline: readings every `interval_s`, for commissioning and demos."""

    enabled: bool = False
    interval_s: float = Field(5.0, ge=0.0001, le=86400.0)  # benches drive it at 1,400 ev/s
    alarm_every_s: float = Field(
        0.0, ge=0, le=7 * 86400.0, description="also raise a test alarm; 0 = never"
    )


class AlarmAckSection(Section):
    """EN 54-21 style supervision of the path to the receiving centre."""

    reload_note: ClassVar[str] = (
        "applied to the running supervisor (pending alarms keep their deadlines)"
    )

    enabled: bool = Field(
        True,
        json_schema_extra={"on_reload": "restart"},
        description="the supervisor runs from the start or not at all",
    )
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
    reload_note: ClassVar[str] = "applied: the log level"

    level: Literal["debug", "info", "warning", "error"] = "info"


#: a phone number as people write it: digits, spaces and + - ( ) / . (checked loosely: dialling
#: plans differ; at least 3 digits)
_PHONE = re.compile(r"^\+?[0-9 ()/.\-]{3,40}$")


def check_phone(value: str) -> str:
    """The one loose phone rule (config `[site]` and the inventory's `contact_phone`)."""
    if not _PHONE.match(value) or sum(ch.isdigit() for ch in value) < 3:
        raise ValueError(
            "is not a phone number: digits, spaces and + - ( ) / . only, 3 to 40 characters, "
            "e.g. +49 30 1234-567"
        )
    return value


class SiteSection(Section):
    """Where the gateway is and whom to call: what a dispatcher needs besides the gateway id.

    Every key is optional (a gateway without them runs; `check-config` warns on a fire point or
    police post that has neither a name nor an address nor coordinates). Carried in the retained
    `state` message (docs/topics.md), so a console learns it from the gateway itself."""

    reload_note: ClassVar[str] = (
        "applied: the retained `state` (birth) is published again; no pipeline restarts"
    )
    restarts_pipelines: ClassVar[bool] = False

    name: TextLine | None = Field(None, description='e.g. "Fire point 12, Hauptstraße school"')
    address: TextLine | None = Field(None, description="street address as a dispatcher reads it")
    latitude: float | None = Field(None, ge=-90.0, le=90.0, description="WGS 84 degrees")
    longitude: float | None = Field(None, ge=-180.0, le=180.0, description="WGS 84 degrees")
    contact_name: TextLine | None = None
    contact_phone: Annotated[str, AfterValidator(check_phone)] | None = None
    access: Note | None = Field(None, description="run card: how to get in, key box, gate code")
    notes: Note | None = Field(None, description="run card: hazards and anything else")

    @model_validator(mode="after")
    def _both_coordinates(self) -> SiteSection:
        if (self.latitude is None) != (self.longitude is None):
            given, missing = (
                ("latitude", "longitude") if self.longitude is None else ("longitude", "latitude")
            )
            raise ValueError(
                f"{given} is given without {missing}: give both coordinates (WGS 84 degrees, "
                "e.g. latitude = 52.5200, longitude = 13.4050) or neither"
            )
        return self

    def birth(self) -> dict[str, Any]:
        """The keys that are set, for the retained `state` message."""
        return self.model_dump(exclude_none=True)

    @property
    def located(self) -> bool:
        return bool(self.name or self.address or self.latitude is not None)


#: the technician page's credential: `pbkdf2_sha256$ITERATIONS$SALT$HASH` (base64), as
#: `wardgate localweb hash-password` prints it (edge/localweb/auth.py)
_PBKDF2_HASH = re.compile(
    r"^pbkdf2_sha256\$[0-9]{4,8}\$[A-Za-z0-9+/=]{16,64}\$[A-Za-z0-9+/=]{43,44}$"
)


class LocalWebSection(Section):
    """The technician's page on the gateway (docs/localweb.md): LAN only, off by default."""

    on_reload: ClassVar = "restart"
    reload_note: ClassVar[str] = "the page's listening socket"

    enabled: bool = Field(False, description="serve the technician's page")
    bind: str | None = Field(
        None,
        description="the gateway's LAN address to listen on (an IP, private or loopback), or"
        ' "lan": every address, answering clients on private, link-local or loopback addresses'
        " only"
        " (a DHCP gateway, whose address is not known at enrollment)",
    )
    port: int = Field(8080, ge=1, le=65535)
    enabled_for_s: float = Field(
        0.0, ge=0, le=30 * 86400.0, description="close the page this long after start; 0 = never"
    )
    password_hash: str | None = Field(
        None,
        repr=False,
        description="technician credential: `wardgate localweb hash-password` prints it",
    )
    allow_public_bind: bool = Field(
        False, description="let `bind` be a public or unspecified address (never on a deployment)"
    )

    @model_validator(mode="after")
    def _lan_only(self) -> LocalWebSection:
        import ipaddress

        if self.password_hash is not None and not _PBKDF2_HASH.match(self.password_hash):
            raise ValueError(
                "password_hash is not a `pbkdf2_sha256$...` hash: make one with "
                "`wardgate localweb hash-password` (never the password itself)"
            )
        if not self.enabled:
            return self
        if self.bind is None or self.password_hash is None:
            raise ValueError("an enabled page needs `bind` (the LAN address) and `password_hash`")
        if self.bind == "lan":
            return self  # every address; the server answers LAN clients only
        try:
            address = ipaddress.ip_address(self.bind)
        except ValueError:
            raise ValueError(
                f"bind = {self.bind!r} is not an IP address: give the gateway's LAN address, "
                "e.g. 192.168.1.20"
            ) from None
        lan = (address.is_private or address.is_loopback or address.is_link_local) and not (
            address.is_unspecified
        )
        if not lan and not self.allow_public_bind:
            raise ValueError(
                f"bind = {self.bind!r} is not a LAN address (private, link-local or loopback): "
                "the technician's page is never served to the internet; give the LAN address"
            )
        return self


class CoreConfig(Section):
    """The gateway's own sections; `Config` adds one field per pipeline plugin."""

    config_version: int = Field(
        CURRENT_VERSION,
        ge=CURRENT_VERSION,
        le=CURRENT_VERSION,
        description="format of the file; older files are migrated in memory (docs/config.md)",
    )
    gateway: GatewaySection
    uplink: UplinkSection = UplinkSection()
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()
    test_source: TestSourceSection = TestSourceSection()
    alarm_ack: AlarmAckSection = AlarmAckSection()
    logging: LoggingSection = LoggingSection()
    site: SiteSection = SiteSection()
    localweb: LocalWebSection = LocalWebSection()

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
    site_hooks: dict[str, Any] = {}
    for name, entry in plugins.registry().items():
        try:
            plugin = entry.load()
            model = plugin.section_model()
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
        if plugin.site_defaults is not None:
            site_hooks[name] = plugin.site_defaults

    def site_defaults(cls: type, data: Any, handler: Any) -> Any:
        """Each plugin's defaults for `[gateway] site_type` (PipelinePlugin.site_defaults)."""
        cfg = handler(data)
        update = {}
        for name, hook in site_hooks.items():
            section = getattr(cfg, name)
            placed = hook(section, cfg.gateway.site_type)
            if placed is not section:
                update[name] = placed
        return cfg.model_copy(update=update) if update else cfg

    return create_model(  # type: ignore[call-overload,no-any-return]
        "Config",
        __base__=CoreConfig,
        __module__=__name__,
        __validators__={"_site_defaults": model_validator(mode="wrap")(site_defaults)},
        **fields,
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


@dataclasses.dataclass
class Checked:
    """What `check-config` reports: the config if it is valid, every problem, every warning."""

    config: CoreConfig | None
    problems: list[str]
    warnings: list[str]
    #: the merged layers and where each value came from (`check-config --show`)
    layers: list[Layer] = dataclasses.field(default_factory=list)
    origins: Origins | None = None


@dataclasses.dataclass
class Layers:
    """The files of one config, read, migrated and merged (docs/config.md, "Layers")."""

    path: Path
    layers: list[Layer]
    data: dict[str, Any]
    origins: Origins
    problems: list[str]
    warnings: list[str]

    @property
    def files(self) -> list[str]:
        return [layer.file for layer in self.layers]


def drop_in_dir(path: Path | str) -> Path:
    """`conf.d/` next to the main file: /etc/wardgate/config.toml -> /etc/wardgate/conf.d."""
    return Path(path).parent / DROP_IN_DIR


def drop_ins(path: Path | str) -> tuple[list[Path], list[str]]:
    """The drop-in files of the config at `path`, in merge order, and problems finding them.

    `*.toml` files only, sorted by name; names starting with `.` (an editor's or the
    commissioning page's temporary files) are skipped. No conf.d directory: no drop-ins."""
    directory = drop_in_dir(path)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return [], []
    except NotADirectoryError:
        return [], [f"{directory}: is not a directory (drop-ins go into {directory}/*.toml)"]
    except OSError as exc:
        return [], [f"{directory}: cannot be read: {exc.strerror or exc}"]
    files = [
        Path(e.path)
        for e in entries
        if e.name.endswith(".toml") and not e.name.startswith(".") and not e.is_dir()
    ]
    return files, []


def read_layers(path: Path | str, *, with_drop_ins: bool = True) -> Layers:
    """The main file and its drop-ins, each read, parsed and migrated, then merged in order.

    A file that cannot be read or parsed is left out of the merge and its problem kept, so that
    every layer's problems are reported at once."""
    path = Path(path)
    files, problems = drop_ins(path) if with_drop_ins else ([], [])
    layers: list[Layer] = []
    warnings: list[str] = []
    for file in [path, *files]:
        try:
            text = read_text(file)
            layer = _layer(text, file)
            warnings += migrate(layer)
        except ConfigError as exc:
            problems += exc.problems
            continue
        except VersionError as exc:
            problems.append(str(exc))
            continue
        layers.append(layer)
    data, origins = Origins.of(layers)
    return Layers(path, layers, data, origins, problems, warnings)


def _layer(text: str, file: Path | str) -> Layer:
    data = _toml(text, file)
    return _checked_layer(Layer(str(file), data, _KeyLines(text.removeprefix(BOM)).where))


def _checked_layer(layer: Layer) -> Layer:
    """ConfigError for a table nested too deep (before a merge or copy recurses into it)."""
    deep = _too_deep(layer.data)
    if deep is not None:
        raise ConfigError(
            layer.file, [f"{layer.where(tuple(deep))}: {_dotted(deep[:6])}: {_TOO_DEEP}"]
        )
    return layer


def load(path: Path | str) -> CoreConfig:
    """The config at `path` with its conf.d drop-ins, or a ConfigError with every problem.

    Migration warnings are logged; `check` returns them (file checks: `check`)."""
    read = read_layers(path)
    if read.problems:
        raise ConfigError(path, read.problems)
    for warning in read.warnings:
        log.warning("%s", warning)
    return validate_model(_model(path), read.data, path, origins=read.origins)


def check(path: Path | str, *, files: bool = True) -> Checked:
    """Everything `wardgate check-config` checks, all problems of every layer at once, in file
    and line order.

    files: also check the files the config names (password_file, TLS CA/cert/key) as the user
    running this would open them: they exist, are regular files, readable, and secrets are not
    readable by group or others (a warning). Off for a config checked away from its gateway.
    """
    read = read_layers(path)
    problems = list(read.problems)
    warnings = list(read.warnings)
    cfg: CoreConfig | None = None
    main_ok = bool(read.layers) and read.layers[0].file == str(Path(path))
    if main_ok:
        try:
            cfg = validate_model(_model(path), read.data, path, origins=read.origins)
        except ConfigError as exc:
            problems += exc.problems
        if files:
            file_errors, file_warnings = file_problems(read.data, path, origins=read.origins)
            problems += file_errors
            warnings += file_warnings
        if cfg is not None:
            warnings += site_warnings(cfg, path, read.origins)
    order = {str(file): i for i, file in enumerate([path, *drop_ins(path)[0]])}
    problems.sort(key=lambda problem: _place_of(problem, order))
    return Checked(None if problems else cfg, problems, warnings, read.layers, read.origins)


def site_warnings(cfg: CoreConfig, path: Path | str, origins: Origins) -> list[str]:
    """A fire point or police post that does not say where it is (a demo may not): warned,
    not refused, so a gateway is never kept from sending alarms for want of an address."""
    if cfg.gateway.site_type == "demo" or cfg.site.located:
        return []
    where = _where(origins, ["site"], path)
    return [
        f"{where}: site: warning: no [site] name, address or coordinates: a dispatcher sees "
        f"only the gateway id {cfg.gateway.id!r} (set them in the inventory, docs/config.md "
        "[site])"
    ]


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
    """One file's text (no drop-ins), migrated to the current version."""
    return _single(_layer(text, path), path)


def from_dict(data: dict[str, Any], path: Path | str = "<config>", text: str = "") -> CoreConfig:
    """A config table (as written to `text`, for lines), migrated to the current version."""
    import copy

    lines = _KeyLines(text.removeprefix(BOM)).where
    _checked_layer(Layer(str(path), data, lines))
    return _single(Layer(str(path), copy.deepcopy(data), lines), path)


def _single(layer: Layer, path: Path | str) -> CoreConfig:
    try:
        notes = migrate(layer)
    except VersionError as exc:
        raise ConfigError(path, [str(exc)]) from None
    for note in notes:
        log.warning("%s", note)
    _, origins = Origins.of([layer])
    return validate_model(_model(path), layer.data, path, origins=origins)


def _line_of(problem: str) -> int:
    match = re.match(r"^.*?:(\d+): ", problem)
    return int(match.group(1)) if match else 0


def _place_of(problem: str, order: dict[str, int]) -> tuple[int, int]:
    """Sort key of a problem: its file's place among the layers, then its line."""
    for file, index in sorted(order.items(), key=lambda item: -len(item[0])):
        if problem.startswith(file + ":") or problem == file:
            return index, _line_of(problem[len(file) :])
    return 0, _line_of(problem)


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
    data: dict[str, Any], path: Path | str, text: str = "", *, origins: Origins | None = None
) -> tuple[list[str], list[str]]:
    """Problems (errors) and warnings about the files a config names, from the raw TOML data,
    so that they are reported together with every schema problem."""
    if origins is None:
        origins = _origins_of(text, path)
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
        where = _where(origins, list(loc), path)
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


# --- reload metadata ------------------------------------------------------------------------


def reload_plan(old: CoreConfig, new: CoreConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """What a reload from `old` to `new` does, from each section's reload metadata.

    Returns (applied sections, refused sections or `section.key`s, the values to keep: a
    refused section whole, or a live section with its refused keys set back to `old`)."""
    applied: list[str] = []
    refused: list[str] = []
    keep: dict[str, Any] = {}
    for name in section_names():
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if type(after).on_reload == "restart":
            refused.append(name)
            keep[name] = before
            continue
        back = {
            key: getattr(before, key)
            for key in type(after).model_fields
            if field_reload(type(after), key) == "restart"
            and getattr(before, key) != getattr(after, key)
        }
        refused += [f"{name}.{key}" for key in back]
        if back:
            after = keep[name] = after.model_copy(update=back)
        if after != before:
            applied.append(name)
    return applied, refused, keep


def section_names() -> list[str]:
    """The top-level sections of the config, in file order."""
    return [
        name
        for name, field in config_model().model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    ]


def reload_table() -> str:
    """docs/config.md's reload table, generated from the metadata (a test keeps them equal)."""
    rows = ["| section or key | on `reload` |", "| --- | --- |"]
    for name in section_names():
        model = config_model().model_fields[name].annotation
        assert isinstance(model, type) and issubclass(model, Section)
        if model.on_reload == "restart":
            how = f"refused until a restart ({model.reload_note}): listed in `restart_required_for`"
        else:
            how = model.reload_note
        rows.append(f"| `[{name}]` | {how} |")
        for key in model.model_fields:
            if field_reload(model, key) != model.on_reload:
                verb = (
                    "refused until a restart" if field_reload(model, key) == "restart" else "live"
                )
                rows.append(f"| `{name}.{key}` | {verb}: listed in `restart_required_for` |")
    return "\n".join(rows) + "\n"


# --- the effective config (`check-config --show`) -------------------------------------------

#: keys whose values `--show` never prints
SECRET_KEYS = frozenset({"password"})


def effective_lines(cfg: CoreConfig, origins: Origins | None) -> list[str]:
    """Every key of the merged, validated config, one a line, with the file:line that set it:
    `vision.cameras[0].fps = 2.0    # conf.d/10-site.toml:4 (inherited from vision.fps)`, or
    `# default`. Unset optional keys are left out; secrets are shown as `"***"`."""
    out: list[str] = []
    data = cfg.model_dump(mode="json")

    def source(loc: tuple[Any, ...]) -> str:
        found = origins.exact(loc) if origins is not None else None
        if found:
            return f"{found[0]}:{found[1]}"
        if len(loc) > 3 and loc[3] in _inherited(loc[0], loc[1]):
            parent = (loc[0], *loc[3:])
            found = origins.exact(parent) if origins is not None else None
            if found:
                return f"{found[0]}:{found[1]} (inherited from {_dotted(list(parent))})"
        return "default"

    def walk(value: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, key))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                walk(item, (*loc, index))
        elif value is not None:
            shown = '"***"' if loc[-1] in SECRET_KEYS else _toml_value(value)
            out.append(f"{_dotted(list(loc))} = {shown}    # {source(loc)}")

    walk(data, ())
    return out


def _inherited(section: str, table: str) -> tuple[str, ...]:
    """The keys each entry of `[section].table` inherits from `[section]` (its model's
    `inherited_by_entries`: a plugin's section declares it, e.g. [vision] cameras)."""
    field = config_model().model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, Section)):
        return ()
    return model.inherited_by_entries.get(table, ())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)
