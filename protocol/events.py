"""Typed, versioned gateway events and their wire encodings (CBOR by default, JSON for debugging).

The wire schema is a contract with the backends (docs/events.md). CBOR payloads use one-letter
keys so that a fire alarm fits in about 100 bytes; JSON payloads and `wardgate decode` use the
long names so a human can read them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import enum
import io
import json
import threading
import time
import uuid
from typing import Any

import cbor2

SCHEMA_VERSION = 1


class Kind(enum.StrEnum):
    ALARM = "alarm"
    FAULT = "fault"
    PERSON = "person"
    SMOKE = "smoke"
    READING = "reading"
    TELEMETRY = "telemetry"


class Severity(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3


class Lane(enum.IntEnum):
    """Outbox priority lanes: a lower number is sent first and is never evicted before a higher."""

    CRITICAL = 0  # alarms and faults: never expired, never evicted
    EVENTS = 1  # person, smoke, reading
    BULK = 2  # telemetry: evicted first


LANE_OF_KIND = {
    Kind.ALARM: Lane.CRITICAL,
    Kind.FAULT: Lane.CRITICAL,
    Kind.PERSON: Lane.EVENTS,
    Kind.SMOKE: Lane.EVENTS,
    Kind.READING: Lane.EVENTS,
    Kind.TELEMETRY: Lane.BULK,
}

DEFAULT_SEVERITY = {
    Kind.ALARM: Severity.CRITICAL,
    Kind.FAULT: Severity.WARNING,
    Kind.PERSON: Severity.INFO,
    Kind.SMOKE: Severity.WARNING,
    Kind.READING: Severity.DEBUG,
    Kind.TELEMETRY: Severity.DEBUG,
}

# CBOR carries the kind as a small integer (JSON as its name): five bytes saved on every event.
KIND_CODE = {
    Kind.ALARM: 1,
    Kind.FAULT: 2,
    Kind.PERSON: 3,
    Kind.SMOKE: 4,
    Kind.READING: 5,
    Kind.TELEMETRY: 6,
}
KIND_OF_CODE = {code: kind for kind, code in KIND_CODE.items()}

# (attribute, one-letter CBOR key, long JSON key)
_FIELDS = (
    ("schema", "v", "schema"),
    ("id", "i", "id"),
    ("time_ms", "t", "time_ms"),
    ("clock_synced", "c", "clock_synced"),
    ("kind", "k", "kind"),
    ("severity", "p", "severity"),
    ("gateway", "g", "gateway"),
    ("source", "s", "source"),
    ("seq", "q", "seq"),
    ("data", "d", "data"),
)
_SHORT_TO_LONG = {short: long for _, short, long in _FIELDS}


class DecodeError(ValueError):
    """A payload that is not a wardgate event; the message says what is wrong."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _ClockState:
    """Is the system clock NTP-synchronised?  Asked of the kernel (adjtimex), cached for a minute.

    A Pi has no RTC: until NTP syncs, its clock may be days off, and consumers must know that.
    """

    _TIME_ERROR = 5
    _TTL_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked_at = -1e9
        self._synced = False
        libc_name = ctypes.util.find_library("c")
        self._adjtimex = getattr(ctypes.CDLL(libc_name), "adjtimex", None) if libc_name else None

    def synced(self) -> bool:
        mono = time.monotonic()
        with self._lock:
            if mono - self._checked_at > self._TTL_S:
                self._synced = self._query()
                self._checked_at = mono
            return self._synced

    def _query(self) -> bool:
        if self._adjtimex is None:
            return False
        buf = ctypes.create_string_buffer(512)  # struct timex, modes=0: read only
        state = self._adjtimex(buf)
        return state >= 0 and state != self._TIME_ERROR


clock = _ClockState()


def new_event_id() -> bytes:
    return uuid.uuid4().bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened at the edge. Immutable; `id` is the consumers' dedupe key."""

    kind: Kind
    source: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    severity: Severity | None = None
    gateway: str = ""
    id: bytes = dataclasses.field(default_factory=new_event_id)
    time_ms: int = dataclasses.field(default_factory=now_ms)
    clock_synced: bool = dataclasses.field(default_factory=clock.synced)
    seq: int | None = None
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        sev = DEFAULT_SEVERITY[self.kind] if self.severity is None else Severity(self.severity)
        object.__setattr__(self, "severity", sev)
        if len(self.id) != 16:
            raise ValueError("event id must be 16 bytes")

    @property
    def lane(self) -> Lane:
        return LANE_OF_KIND[self.kind]

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def with_(self, **changes: Any) -> Event:
        return dataclasses.replace(self, **changes)

    # --- encodings -------------------------------------------------------------------------
    def to_cbor(self) -> bytes:
        out: dict[str, Any] = {}
        for attr, short, _ in _FIELDS:
            value = getattr(self, attr)
            if value is None:
                continue
            if attr == "kind":
                value = KIND_CODE[value]
            elif attr == "severity":
                if value == DEFAULT_SEVERITY[self.kind]:
                    continue  # implied by the kind: saves bytes on every alarm
                value = int(value)
            elif attr == "clock_synced" and value:
                continue  # only an unsynchronised clock is flagged on the wire
            out[short] = value
        return cbor2.dumps(out, canonical=True)

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, _, long in _FIELDS:
            value = getattr(self, attr)
            if value is None:
                continue
            if attr == "id":
                value = value.hex()
            elif attr == "kind":
                value = str(value)
            elif attr == "severity":
                value = value.name.lower()
            out[long] = value
        return out

    def to_json(self) -> bytes:
        return json.dumps(
            self.to_json_dict(), separators=(",", ":"), default=_json_default
        ).encode()

    def encode(self, fmt: str = "cbor") -> bytes:
        return self.to_cbor() if fmt == "cbor" else self.to_json()

    @classmethod
    def from_json_dict(cls, obj: dict[str, Any]) -> Event:
        try:
            sev = obj.get("severity")
            if isinstance(sev, str):
                sev = Severity[sev.upper()]
            return cls(
                kind=Kind(obj["kind"]),
                source=str(obj["source"]),
                data=dict(obj.get("data") or {}),
                severity=sev,
                gateway=str(obj.get("gateway", "")),
                id=bytes.fromhex(obj["id"]),
                time_ms=int(obj["time_ms"]),
                clock_synced=bool(obj.get("clock_synced", True)),
                seq=obj.get("seq"),
                schema=int(obj.get("schema", SCHEMA_VERSION)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DecodeError(f"not a wardgate event: {exc!r}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def decode(payload: bytes) -> Event:
    """Decode a CBOR or JSON event payload (auto-detected)."""
    if not payload:
        raise DecodeError("empty payload")
    stripped = payload.lstrip()
    if stripped[:1] == b"{":
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise DecodeError("JSON payload is not an object")
        return Event.from_json_dict(obj)
    obj = _cbor_map(payload)
    unknown = set(obj) - set(_SHORT_TO_LONG)
    if unknown:
        raise DecodeError(f"unknown CBOR keys {sorted(map(str, unknown))}")
    long = {_SHORT_TO_LONG[k]: v for k, v in obj.items()}
    if isinstance(long.get("id"), bytes):
        long["id"] = long["id"].hex()
    if isinstance(long.get("kind"), int):
        if long["kind"] not in KIND_OF_CODE:
            raise DecodeError(f"unknown kind code {long['kind']}")
        long["kind"] = KIND_OF_CODE[long["kind"]]
    if isinstance(long.get("severity"), int):
        long["severity"] = Severity(long["severity"]).name
    return Event.from_json_dict(long)


def _cbor_map(payload: bytes) -> dict[Any, Any]:
    """One CBOR map and nothing after it (cbor2.loads ignores trailing bytes)."""
    stream = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types on garbage
        raise DecodeError(f"invalid CBOR: {exc}") from exc
    if stream.tell() != len(payload):
        raise DecodeError(f"invalid CBOR: {len(payload) - stream.tell()} bytes after the value")
    if not isinstance(obj, dict):
        raise DecodeError("CBOR payload is not a map")
    return obj


def decode_any(payload: bytes) -> dict[str, Any]:
    """JSON view of any wardgate payload: events, and the JSON or CBOR objects of state,
    command replies and acknowledgements. Raises DecodeError for anything else."""
    try:
        return json.loads(decode(payload).to_json())  # bytes inside `data` become hex
    except DecodeError as exc:
        first_error = exc
    if payload.lstrip()[:1] == b"{":
        try:
            return json.loads(payload)
        except ValueError:
            raise first_error from None
    return json.loads(json.dumps(_cbor_map(payload), default=_json_default))
