"""Modbus register maps as data: sensor_drivers/profiles/<name>.toml (reference: docs/sensors.md).

A profile says where a detector keeps its readings, alarm and fault flags, and how to reset it,
so a new detector model is a new TOML file, not new code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from edge.confbase import ConfigError, Section, parse_model
from protocol.names import SHORT_NAME_PATTERN

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

Name = Annotated[str, Field(pattern=SHORT_NAME_PATTERN)]
Table = Literal["input", "holding", "discrete", "coil"]
Address = Annotated[int, Field(ge=0, le=65535)]
#: engineering values (finite, like every float in a Section): beyond this is a typo
Value = Annotated[float, Field(ge=-1e12, le=1e12)]

WORDS = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}


class Point(Section):
    """A measured value, reported as `reading` events."""

    name: Name
    table: Literal["input", "holding"] = "input"
    address: Address
    type: Literal["uint16", "int16", "uint32", "int32", "float32"] = "uint16"
    scale: Value = 1.0
    unit: str = Field("", max_length=8)
    deadband: float | None = Field(
        None, ge=0, le=1e12, description="default: [serial.readings] percent"
    )
    report: bool = Field(True, description="false: read (for alarms, status) but not reported")

    @property
    def words(self) -> int:
        return WORDS[self.type]


class Flag(Section):
    """A bit: a discrete input or coil, or bit `bit` of an input/holding register."""

    name: Name = Field(description="the sensor it belongs to; the event source is <device>/<name>")
    table: Table | None = None
    address: Address | None = None
    bit: int | None = Field(None, ge=0, le=15)
    # or a threshold on a point, for plain transmitters without alarm flags of their own
    point: Name | None = None
    above: Value | None = None
    hysteresis: float = Field(0.0, ge=0, le=1e12)

    @model_validator(mode="after")
    def _one_source(self) -> Flag:
        register = self.table is not None and self.address is not None
        threshold = self.point is not None and self.above is not None
        if register == threshold:
            raise ValueError("give either table + address (+ bit), or point + above")
        if register and self.table in ("input", "holding") and self.bit is None:
            raise ValueError(f"a flag in an {self.table} register needs `bit`")
        if register and self.table in ("discrete", "coil") and self.bit is not None:
            raise ValueError("`bit` is only for input and holding registers")
        return self


class Alarm(Flag):
    cause: Name
    level: int | None = Field(None, ge=1, le=9, description="alarm level, e.g. gas AL1 / AL2")
    value_point: Name | None = Field(None, description="point whose value goes with the alarm")


class Fault(Flag):
    code: Name


class Reset(Section):
    table: Literal["coil", "holding"]
    address: Address
    value: int = Field(1, ge=0, le=65535)


class Profile(Section):
    description: str = ""
    word_order: Literal["big", "little"] = "big"
    points: list[Point] = Field(default_factory=list)
    alarms: list[Alarm] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    reset: Reset | None = None
    silence: Reset | None = None

    @model_validator(mode="after")
    def _points_exist(self) -> Profile:
        names = {p.name for p in self.points}
        for flag in [*self.alarms, *self.faults]:
            for ref in (flag.point, getattr(flag, "value_point", None)):
                if ref is not None and ref not in names:
                    raise ValueError(f"{flag.name}: no point named {ref!r} (have {sorted(names)})")
        if not self.alarms and not self.points:
            raise ValueError("a profile needs at least one point or alarm")
        return self


def profile_path(name: str) -> Path:
    if "/" in name or name.endswith(".toml"):
        return Path(name)
    return PROFILE_DIR / f"{name}.toml"


@lru_cache(maxsize=64)
def load_profile(name: str) -> Profile:
    """A profile by name (sensor_drivers/profiles/<name>.toml) or path; ConfigError if bad."""
    path = profile_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(path, [f"{path}: is a directory, not a profile file"]) from None
    except OSError:
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise ConfigError(path, [f"{path}: no such profile (built in: {known})"]) from None
    return parse_model(Profile, text, path)
