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
import re
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
        # what the decoder refuses is refused here too: every event built can be decoded
        for attr, required in (("source", True), ("gateway", False)):
            problem = _name_problem(getattr(self, attr), required=required)
            if problem:
                raise ValueError(f"event {attr} {problem}: {getattr(self, attr)!r:.60}")

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
    def from_json_dict(cls, obj: Any) -> Event:
        """The event of a JSON object (long keys); DecodeError names the first bad member."""
        if not isinstance(obj, dict):
            raise DecodeError("JSON payload is not an object")
        return _event(obj, _JSON_FORM)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- decoding: anything may arrive; only DecodeError leaves ----------------------------------

#: The largest payload `decode` looks at. Events are small (a fire alarm is ~100 bytes, a
#: heartbeat under 1 KiB); snapshots (JPEG) travel on `snap/` and never go through `decode`.
MAX_PAYLOAD = 64 * 1024
#: Longest `source` and `gateway` text (the emitters' names are far shorter).
MAX_NAME = 256
#: `time_ms` must be below this: 2**53 ms is year 287,396, and the largest integer a
#: JavaScript or JSON consumer holds exactly.
MAX_TIME_MS = 2**53
#: Integers in `data` (and `seq`, `schema`) fit in CBOR's 64-bit major types: no bignums.
_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1
#: Containers inside `data` (or a non-event payload of decode_any) nest at most this deep.
MAX_DEPTH = 32
_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")
_SEVERITY_OF_NAME = {s.name.lower(): s for s in Severity}
_SEVERITY_OF_CODE = {int(s): s for s in Severity}
_KIND_OF_NAME = {str(k): k for k in Kind}


class _Form:
    """What each member looks like in one encoding (CBOR: codes and bytes, JSON: names, hex)."""

    def __init__(self, name: str, key: dict[str, str]) -> None:
        self.name = name
        self.key = key  # attribute -> the key in this encoding


_CBOR_FORM = _Form("CBOR", {attr: short for attr, short, _ in _FIELDS})
_JSON_FORM = _Form("JSON", {attr: long for attr, _, long in _FIELDS})


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool, not an int subclass from a tag


def _int_member(obj: dict, form: _Form, attr: str, low: int, high: int) -> int:
    value = obj[form.key[attr]]
    if not _is_int(value) or not low <= value <= high:
        raise DecodeError(f"{form.key[attr]!r} ({attr}) must be an integer {low}..{high}")
    return value


def _text_member(obj: dict, form: _Form, attr: str, *, required: bool) -> str:
    value = obj.get(form.key[attr], None if required else "")
    problem = _name_problem(value, required=required)
    if problem:
        raise DecodeError(f"{form.key[attr]!r} ({attr}) {problem}")
    return value


def _name_problem(value: Any, *, required: bool) -> str | None:
    """What is wrong with a `source` or `gateway` text (the encoder and decoder share it)."""
    if not isinstance(value, str) or (required and not value) or len(value) > MAX_NAME:
        return f"must be {'non-empty text' if required else 'text'} of at most {MAX_NAME}"
    if not value.isprintable() or not _utf8(value):
        return "has control or invalid characters"
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON \\ud800 escape
        return False
    return True


def _show(value: Any) -> str:
    """A short, safe rendering of a hostile value for an error message (repr of a CBOR tag
    around a 100,000-digit bignum raises, and of a cyclic one is long)."""
    if isinstance(value, str):
        return repr(value[:40])
    if value is None or isinstance(value, bool | float) or (_is_int(value) and abs(value) < 2**64):
        return repr(value)
    return f"a {type(value).__name__}"


def _plain(value: Any, where: str) -> None:
    """Check that `value` is plain data: None, bool, int (64-bit), float, text, bytes, lists and
    maps with text keys, at most MAX_DEPTH deep. No CBOR tags (dates, bignums, sets, shared
    references that make cycles, ...): a consumer and `decode_any` can always write it as JSON.
    Iterative, so no nesting can exhaust the stack."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, bool | float | str | bytes):
            if isinstance(item, str) and not _utf8(item):
                raise DecodeError(f"{where}: text with a lone surrogate")
            continue
        if _is_int(item):
            if not _INT_MIN <= item <= _INT_MAX:
                raise DecodeError(f"{where}: integer beyond 64 bits")
            continue
        if depth >= MAX_DEPTH:
            raise DecodeError(f"{where}: nested deeper than {MAX_DEPTH}")
        if type(item) is list:
            stack.extend((member, depth + 1) for member in item)
        elif type(item) is dict:
            for key, member in item.items():
                if type(key) is not str or not _utf8(key):
                    raise DecodeError(f"{where}: map key {_show(key)} is not text")
                stack.append((member, depth + 1))
        else:
            raise DecodeError(f"{where}: {type(item).__name__} is not plain data (a CBOR tag?)")


def _event(obj: dict, form: _Form) -> Event:
    """Validate every member (type and range) and build the Event. Keys this schema does not
    know are ignored: the schema grows by adding members (docs/events.md, Versioning)."""
    k = form.key
    missing = [k[a] for a in ("id", "time_ms", "kind", "source") if k[a] not in obj]
    if missing:
        raise DecodeError(f"not a wardgate event: missing {', '.join(map(repr, missing))}")
    schema = SCHEMA_VERSION
    if k["schema"] in obj:
        schema = _int_member(obj, form, "schema", 1, 2**31 - 1)
    raw_id = obj[k["id"]]
    if form is _CBOR_FORM:
        if type(raw_id) is not bytes or len(raw_id) != 16:
            raise DecodeError("'i' (id) must be 16 bytes")
        event_id = raw_id
    else:
        if not isinstance(raw_id, str) or not _HEX_ID.fullmatch(raw_id):
            raise DecodeError("'id' must be 32 hex digits")
        event_id = bytes.fromhex(raw_id)
    time_ms = _int_member(obj, form, "time_ms", 0, MAX_TIME_MS - 1)
    raw_kind = obj[k["kind"]]
    kind = (
        KIND_OF_CODE.get(raw_kind) if _is_int(raw_kind) and form is _CBOR_FORM
        else _KIND_OF_NAME.get(raw_kind) if isinstance(raw_kind, str) and form is _JSON_FORM
        else None
    )  # fmt: skip
    if kind is None:
        expected = "a code 1..6" if form is _CBOR_FORM else f"one of {sorted(_KIND_OF_NAME)}"
        raise DecodeError(f"{k['kind']!r} (kind) must be {expected}, not {_show(raw_kind)}")
    severity = None
    if k["severity"] in obj:
        raw = obj[k["severity"]]
        if form is _CBOR_FORM:
            severity = _SEVERITY_OF_CODE.get(raw) if _is_int(raw) else None
        elif isinstance(raw, str):
            severity = _SEVERITY_OF_NAME.get(raw.lower())
        if severity is None:
            expected = "a code 0..3" if form is _CBOR_FORM else f"one of {list(_SEVERITY_OF_NAME)}"
            raise DecodeError(f"{k['severity']!r} (severity) must be {expected}, not {_show(raw)}")
    clock_synced = obj.get(k["clock_synced"], True)
    if type(clock_synced) is not bool:
        raise DecodeError(f"{k['clock_synced']!r} (clock_synced) must be true or false")
    seq = obj.get(k["seq"])
    if seq is not None:
        seq = _int_member(obj, form, "seq", 0, 2**63 - 1)
    data = obj.get(k["data"], {})
    if type(data) is not dict:
        raise DecodeError(f"{k['data']!r} (data) must be a map")
    _plain(data, f"{k['data']!r} (data)")
    return Event(
        kind=kind,
        source=_text_member(obj, form, "source", required=True),
        data=data,
        severity=severity,
        gateway=_text_member(obj, form, "gateway", required=False),
        id=event_id,
        time_ms=time_ms,
        clock_synced=clock_synced,
        seq=seq,
        schema=schema,
    )


def _bounded(payload: Any) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError(f"a payload is bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    if not payload:
        raise DecodeError("empty payload")
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(payload)} bytes: events are at most {MAX_PAYLOAD}")
    return payload


def _is_json(payload: bytes) -> bool:
    return payload.lstrip()[:1] == b"{"


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deep") from None
    except ValueError as exc:  # also UnicodeDecodeError, and integers of over 4300 digits
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("JSON payload is not an object")
    return obj


def decode(payload: bytes) -> Event:
    """Decode a CBOR or JSON event payload (auto-detected).

    Raises DecodeError, and nothing else, for anything that is not a valid event: a receiver
    that catches DecodeError survives any payload (tests/test_events_fuzz.py).
    """
    payload = _bounded(payload)
    if _is_json(payload):
        return _event(_json_object(payload), _JSON_FORM)
    return _event(_cbor_map(payload), _CBOR_FORM)


def _cbor_map(payload: bytes) -> dict[Any, Any]:
    """One CBOR map and nothing after it (cbor2.loads ignores trailing bytes)."""
    stream = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types on garbage (also RecursionError)
        raise DecodeError(f"invalid CBOR: {type(exc).__name__}: {exc}"[:300]) from None
    if stream.tell() != len(payload):
        raise DecodeError(f"invalid CBOR: {len(payload) - stream.tell()} bytes after the value")
    if not isinstance(obj, dict):
        raise DecodeError("CBOR payload is not a map")
    return obj


def decode_any(payload: bytes) -> dict[str, Any]:
    """JSON view of any wardgate payload: events, and the JSON or CBOR objects of state,
    command replies and acknowledgements. Raises DecodeError, and nothing else, for anything
    else."""
    payload = _bounded(payload)
    try:
        return json.loads(decode(payload).to_json())  # bytes inside `data` become hex
    except DecodeError as exc:
        first_error = exc
    try:
        obj = _json_object(payload) if _is_json(payload) else _cbor_map(payload)
        _plain(obj, "payload")
    except DecodeError:
        raise first_error from None
    return json.loads(json.dumps(obj, default=_json_default))
