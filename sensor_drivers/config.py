"""Config of the serial fire-sensor pipelines: the `[serial]` table and its `[[serial.ports]]`.

Reference: docs/sensors.md. One port is one pipeline: a UART with node-protocol sensor nodes, or
an RS-485 bus with Modbus RTU detectors (several unit ids on one bus).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge.confbase import ConfigError, Label, Section, TopicSegment
from protocol.names import SHORT_NAME_PATTERN, SHORT_NAME_RULE, is_short_name, node_label

#: where udev names USB-serial adapters by their serial number (stable across plugs)
BY_ID_DIR = Path("/dev/serial/by-id")
HOUR = 3600.0
DAY = 86400.0
ShortName = Annotated[
    str,
    Field(
        pattern=SHORT_NAME_PATTERN,
        description=SHORT_NAME_RULE + ": the start of every event source",
    ),
]


#: labels on one port at most (the birth message carries them all: docs/topics.md)
MAX_LABELS = 256


def resolve(path: str, by_id_dir: Path = BY_ID_DIR) -> Path:
    """A device path as given, or a bare name looked up in /dev/serial/by-id."""
    if "/" in path:
        return Path(path)
    return by_id_dir / path


class ReadingSettings(Section):
    """Readings are reported by exception and rate-limited per source."""

    min_interval_s: float = Field(
        10.0, ge=0, le=DAY, description="at most one reading per source this often"
    )
    max_interval_s: float = Field(
        300.0, ge=0.01, le=DAY, description="and at least one this often, even without change"
    )
    deadband_pct: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="default change, in % of the last value, that counts as a change",
    )


class ModbusDevice(Section):
    unit: int = Field(ge=1, le=247, description="Modbus unit (slave) id on the bus")
    profile: str = Field(description="register map: a name in sensor_drivers/profiles or a path")
    name: ShortName | None = Field(None, description="source prefix; default d<unit>, e.g. d01")

    @field_validator("profile")
    @classmethod
    def _profile_loads(cls, name: str) -> str:
        from sensor_drivers.modbus_profile import load_profile, profile_path

        path = profile_path(name)
        if path == Path(name) and not path.is_absolute():
            raise ValueError(
                "a profile file must be given by its absolute path (or give a built-in name)"
            )
        try:
            load_profile(name)
        except ConfigError as exc:
            raise ValueError("profile: " + "; ".join(exc.problems)) from None
        return name

    @property
    def source(self) -> str:
        return self.name or f"d{self.unit:02d}"

    def sensor_names(self) -> set[str]:
        """What follows `<source>/` in this device's events: its profile's points and flags."""
        from sensor_drivers.modbus_profile import load_profile

        profile = load_profile(self.profile)
        return {item.name for item in [*profile.points, *profile.alarms, *profile.faults]}


def label_problem(source: str, nodes: list[int], devices: list[ModbusDevice]) -> str | None:
    """Why `source` is not an event source of a serial line with these nodes or detectors, or
    None. The one rule for `[[serial.ports]] labels` and the inventory's `labels` column.

    A node's sensor names come from the node itself (its hello), so any short name is taken
    after `nNN/`; a Modbus detector's come from its profile."""
    head, slash, tail = source.partition("/")
    by_node = {node_label(n): n for n in nodes}
    by_device = {d.source: d for d in devices}
    if head in by_node:
        if slash and not is_short_name(tail):
            return f"{tail!r} is not a sensor name ({SHORT_NAME_RULE})"
        return None
    if head in by_device:
        if slash:
            names = by_device[head].sensor_names()
            if tail not in names:
                return (
                    f"detector {head} (profile {by_device[head].profile}) has no sensor "
                    f"{tail!r}; it has: {', '.join(sorted(names))}"
                )
        return None
    have = sorted(by_node) + sorted(by_device)
    return (
        f"no node or detector {head!r} on this line"
        + (f" (it has: {', '.join(have)})" if have else "")
        + " (a label names an event source as the gateway sends it: n07, n07/smoke, d01, "
        "d01/smoke)"
    )


class PortSettings(Section):
    name: TopicSegment = Field(description="pipeline name, e.g. nodes1 or rs485")
    path: str = Field(
        min_length=1,
        max_length=255,
        description="device path (/dev/ttyUSB0) or a /dev/serial/by-id name (stable across plugs)",
    )
    protocol: Literal["node", "modbus"]
    baud: int = Field(
        115200, ge=300, le=4_000_000, description="default: node 115200, modbus 19200"
    )
    parity: Literal["N", "E", "O"] = Field("N", description="default: node N, modbus E")
    stopbits: Literal[1, 2] = 1
    reconnect_s: float = Field(
        1.0, ge=0.01, le=600.0, description="first retry after the port is lost"
    )
    reconnect_max_s: float = Field(10.0, ge=0.01, le=HOUR)
    # node protocol
    nodes: list[Annotated[int, Field(ge=0, le=254)]] = Field(
        default_factory=list,
        description="node ids expected on this port: missing ones are faults from the start",
    )
    silent_after_s: float = Field(
        15.0,
        ge=0.01,
        le=DAY,
        description="a node with no frame for this long is reported silent (fault)",
    )
    # modbus
    devices: list[ModbusDevice] = Field(default_factory=list)
    poll_s: float = Field(1.0, ge=0.01, le=HOUR, description="Modbus: poll every device this often")
    timeout_s: float = Field(
        0.3, ge=0.01, le=60.0, description="Modbus: wait this long for an answer"
    )
    retries: int = Field(1, ge=0, le=10, description="Modbus: retries before a poll fails")
    fail_after: int = Field(
        2, ge=1, le=100, description="Modbus: consecutive failed polls before a device fault"
    )
    labels: dict[str, Label] = Field(
        default_factory=dict,
        description='event source on this line -> human label, e.g. "n07/smoke" = "kitchen, '
        '2nd floor"; carried in the birth message (docs/topics.md), never in events',
    )

    @model_validator(mode="before")
    @classmethod
    def _modbus_line_defaults(cls, data: Any) -> Any:
        """Modbus RTU's own defaults (Modbus over Serial Line, 2.5.1): 19200 baud, even parity.
        Our nodes run at 115200 8N1."""
        if isinstance(data, dict) and data.get("protocol") == "modbus":
            data = {"baud": 19200, "parity": "E", **data}
        return data

    @field_validator("path")
    @classmethod
    def _device_path(cls, path: str) -> str:
        if "/" in path and not path.startswith("/"):
            raise ValueError(
                "a device path must be absolute (/dev/ttyUSB0); a bare name is looked up in "
                "/dev/serial/by-id"
            )
        return path

    @model_validator(mode="after")
    def _fits_protocol(self) -> PortSettings:
        if self.protocol == "modbus":
            if not self.devices:
                raise ValueError("a modbus port needs at least one [[serial.ports.devices]]")
            if self.nodes:
                raise ValueError('`nodes` is for protocol = "node" ports')
            units = [d.unit for d in self.devices]
            if len(set(units)) != len(units):
                raise ValueError(f"unit ids must differ on one bus (got {units})")
            sources = [d.source for d in self.devices]
            if len(set(sources)) != len(sources):
                raise ValueError(f"device names must differ (got {sources})")
        elif self.devices:
            raise ValueError('`devices` is for protocol = "modbus" ports')
        return self

    @field_validator("labels")
    @classmethod
    def _labels_name_sources_here(cls, labels: dict[str, str], info: ValidationInfo) -> Any:
        """Each label names an event source of this line; every wrong one is listed at once."""
        if len(labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels on one port (got {len(labels)})")
        if "nodes" not in info.data or "devices" not in info.data:
            return labels  # those keys are wrong themselves: reported at their own lines
        wrong = [
            f"{source!r}: {problem}"
            for source in labels
            if (problem := label_problem(source, info.data["nodes"], info.data["devices"]))
        ]
        if wrong:
            raise ValueError("; ".join(wrong))
        return labels


class SerialConfig(Section):
    reload_note: ClassVar[str] = (
        "applied, and so are edited Modbus profile files: the affected pipelines restart with "
        "the new settings"
    )

    ports: list[PortSettings] = Field(default_factory=list)
    readings: ReadingSettings = ReadingSettings()

    @field_validator("ports")
    @classmethod
    def _distinct(cls, ports: list[PortSettings]) -> list[PortSettings]:
        for attr in ("name", "path"):
            seen = [getattr(p, attr) for p in ports]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"two ports with the same {attr}: {dupes}")
        return ports

    def source_labels(self) -> dict[str, str]:
        """Event source -> label, over every port (the birth message's `labels`)."""
        return {source: label for port in self.ports for source, label in port.labels.items()}
