"""The event decoder under hostile input (issue 9): whatever bytes arrive, `decode` and
`decode_any` either return or raise DecodeError, never anything else (a receiver catches only
DecodeError; any other exception killed its network thread).

Derandomized hypothesis runs (the same inputs on every run, so CI is stable); each example
mutates real-shaped events many times, so the suite decodes well over 100,000 inputs in a few
seconds. Every test counts what it decoded and asserts the count: a strategy that silently
stopped generating would otherwise pass.
"""

from __future__ import annotations

import collections
import json
import math
import random

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.events import DecodeError, Event, Kind, Severity, decode, decode_any


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def real_events() -> list[Event]:
    """One event of each shape the gateway emits (the emitters' own data members)."""
    common = {"gateway": "fp-d03-002", "time_ms": 1795653020382}
    ref = bytes(range(16))
    events = [
        Event(Kind.ALARM, "n07/smoke", {"cause": "smoke", "value": 82.5}, seq=118, **common),
        Event(Kind.ALARM, "test", {"cause": "test"}, seq=3, clock_synced=False, **common),
        Event(Kind.FAULT, "n07", {"active": True, "code": "silent", "after_s": 15}, **common),
        Event(
            Kind.FAULT,
            "uplink/ack",
            {"active": True, "code": "alarm_unacknowledged", "alarm": ref.hex(), "age_s": 91},
            seq=7,
            **common,
        ),
        Event(Kind.READING, "d01/smoke", {"value": 0.42, "unit": "%/m"}, seq=99, **common),
        Event(
            Kind.TELEMETRY,
            "gateway",
            {
                "uptime_s": 3600,
                "load1": 0.31,
                "mem_avail_mb": 512,
                "rss_mb": 48,
                "disk_free_mb": 20000,
                "outbox": {"critical": 0, "events": 2, "bulk": 1},
                "evicted": {"critical": 0, "events": 0, "bulk": 0},
                "uplink": {"connected": True, "connections": 1, "inflight": 0, "sent": 9},
                "pipelines": {"serial": "ok", "vision": "degraded"},
            },
            seq=4,
            **common,
        ),
        Event(
            Kind.PERSON,
            "cam/gate",
            {"ev": "update", "trk": 3, "ref": ref, "score": 0.8, "box": [1, 2, 30, 60]},
            **common,
        ),
    ]
    # fixed ids: the same bytes on every run (derandomized inputs are then the same too)
    return [e.with_(id=bytes([i]) * 16) for i, e in enumerate(events)]


PAYLOADS = [p for e in real_events() for p in (e.to_cbor(), e.to_json())]


class Tally:
    """Counts decoded inputs and collects every exception other than DecodeError."""

    def __init__(self) -> None:
        self.decoded = 0
        self.escaped: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, bytes] = {}

    def feed(self, payload: bytes) -> None:
        self.decoded += 1
        for fn in (decode, decode_any):
            try:
                fn(payload)
            except DecodeError:
                pass
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                name = f"{fn.__name__}: {type(exc).__name__}"
                self.escaped[name] += 1
                self.samples.setdefault(name, payload[:200])

    def check(self, at_least: int) -> None:
        assert not self.escaped, (
            f"exceptions other than DecodeError: {dict(self.escaped)}; samples {self.samples}"
        )
        assert self.decoded >= at_least, f"only {self.decoded} inputs decoded"
        print(f"{self.decoded} inputs decoded, each by decode and decode_any: only DecodeError")


FLIPS = Tally()
FLIPS_PER_EXAMPLE = 100
FLIP_EXAMPLES = 1100


def _mutate(payload: bytes, rng: random.Random) -> bytes:
    data = bytearray(payload or b"\xa0")
    how = rng.random()
    if how < 0.7:  # a few bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data) * 8)
            data[i // 8] ^= 1 << (i % 8)
    elif how < 0.8:  # a byte replaced by an interesting one
        data[rng.randrange(len(data))] = rng.choice(
            [0x00, 0x1B, 0x3B, 0x5B, 0x7B, 0x9B, 0xBB, 0xC1, 0xC2, 0xD8, 0xF9, 0xFB, 0xFF]
        )
    elif how < 0.9:  # truncated or extended
        cut = rng.randrange(len(data))
        data = data[:cut] if rng.random() < 0.5 else data[:cut] + rng.randbytes(8) + data[cut:]
    else:  # a run of bytes duplicated
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 16))
        data[a:a] = data[a:b]
    return bytes(data)


@fuzz(FLIP_EXAMPLES)
@given(index=st.integers(0, len(PAYLOADS) - 1), seed=st.integers(0, 2**32 - 1))
def test_bit_flips_of_real_events_raise_only_decode_error(index, seed):
    rng = random.Random(seed)
    payload = PAYLOADS[index]
    for _ in range(FLIPS_PER_EXAMPLE):
        payload = _mutate(payload, rng) if rng.random() < 0.6 else _mutate(PAYLOADS[index], rng)
        FLIPS.feed(payload)


def test_bit_flips_counted():
    """Runs after the flips (file order): >= 100,000 decoded inputs, none escaped."""
    FLIPS.check(at_least=100_000)


# --- arbitrary CBOR and JSON structures ------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([63, 64, 65, 1000, 70_000]).map(lambda n: 2**n),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -0.0, 2.0**53]),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.sampled_from([1, 300, 70_000]).map("x".__mul__),
    st.sampled_from(["", "\x00", "\ud800", "critical", "alarm", "99"]),
)
_tags = st.builds(
    cbor2.CBORTag,
    st.sampled_from([0, 1, 2, 3, 4, 5, 21, 24, 25, 28, 29, 30, 32, 35, 37, 258, 260, 55799, 9999]),
    _scalars,
)
_values = st.recursive(
    st.one_of(_scalars, _tags),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), inner, max_size=4),
        st.builds(cbor2.CBORTag, st.integers(0, 2**64 - 1), inner),
    ),
    max_leaves=12,
)
_KEYS = ("v", "i", "t", "c", "k", "p", "g", "s", "q", "d")
_JSON_KEYS = ("schema", "id", "time_ms", "clock_synced", "kind", "severity", "gateway")
_JSON_KEYS += ("source", "seq", "data")

STRUCTURES = Tally()


def _cbor(value) -> bytes | None:
    try:
        return cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return None


@fuzz(1000)
@given(value=_values)
def test_arbitrary_cbor_raises_only_decode_error(value):
    payload = _cbor(value)
    if payload is not None:
        STRUCTURES.feed(payload)


@fuzz(1500)
@given(
    index=st.integers(0, len(real_events()) - 1),
    fields=st.dictionaries(st.sampled_from(_KEYS + ("x", "zz")), _values, min_size=1, max_size=3),
    as_json=st.booleans(),
)
def test_real_events_with_hostile_fields_raise_only_decode_error(index, fields, as_json):
    """A valid event with one to three members replaced by anything: the validation paths
    (severity 99, time inf, bool for int, str for int, a tag for the id, ...)."""
    event = real_events()[index]
    if as_json:
        obj = event.to_json_dict()
        obj["id"] = event.id_hex
        obj |= {_JSON_KEYS[_KEYS.index(k)] if k in _KEYS else k: v for k, v in fields.items()}
        try:
            payload = json.dumps(obj, default=lambda b: b.hex() if isinstance(b, bytes) else 0)
        except (ValueError, TypeError, RecursionError):
            return
        STRUCTURES.feed(payload.encode("utf-8", "surrogatepass"))
    else:
        obj = cbor2.loads(event.to_cbor()) | fields
        payload = _cbor(obj)
        if payload is not None:
            STRUCTURES.feed(payload)


def test_arbitrary_structures_counted():
    STRUCTURES.check(at_least=2000)


# --- deep nesting and size -------------------------------------------------------------------


def test_deep_nesting_and_huge_payloads_raise_only_decode_error():
    tally = Tally()
    alarm = real_events()[0]
    cbor_map = cbor2.loads(alarm.to_cbor())
    inputs = [
        b"\x81" * 100_000 + b"\x00",  # 100k nested CBOR arrays
        b"\x81" * 60_000 + b"\x00",  # under the size limit
        b"\xa1\x61a" * 20_000 + b"\x00",  # nested maps
        b"\x9f" * 60_000,  # indefinite arrays, never closed
        b"\xd8\x1c" * 30_000 + b"\x00",  # tags around tags
        b"[" * 100_000 + b"]" * 100_000,  # JSON
        b'{"a":' * 12_000 + b"1" + b"}" * 12_000,
        b'{"kind":"alarm","data":' + b"[" * 30_000 + b"]" * 30_000 + b"}",
        b"\x5b" + (2**62).to_bytes(8, "big"),  # a byte string longer than any memory
        b"\x9b" + (2**62).to_bytes(8, "big"),
        b"\xc2\x5a" + (60_000).to_bytes(4, "big") + b"\xff" * 60_000,  # a 480,000-bit bignum
        b"\x00" * (1 << 20),  # 1 MiB
        alarm.to_cbor() + b"\x00" * 70_000,
        cbor2.dumps(cbor_map | {"d": {"x": "y" * 70_000}}),  # a valid shape, over the limit
        b" " * 70_000 + alarm.to_json(),
    ]
    nested: object = 0
    for _ in range(300):
        nested = [nested]
    inputs.append(cbor2.dumps(cbor_map | {"d": {"deep": nested}}))
    inputs.append(alarm.to_json()[:-2] + b',"deep":' + json.dumps(nested).encode() + b"}}")
    for payload in inputs:
        tally.feed(payload)
    tally.check(at_least=len(inputs))


# --- what must still decode ------------------------------------------------------------------


def test_every_real_event_decodes_to_itself():
    for event in real_events():
        assert decode(event.to_cbor()) == event
        assert decode(event.to_json()).to_json() == event.to_json()


def test_unknown_keys_are_ignored_additive_schema_growth():
    """A newer gateway may add members: a one-letter CBOR key or a long JSON key we do not
    know is skipped, the event still decodes."""
    alarm = real_events()[0]
    grown = cbor2.dumps(cbor2.loads(alarm.to_cbor()) | {"z": [1, 2], "loc": {"lat": 52.5}})
    assert decode(grown) == alarm
    grown_json = json.dumps(alarm.to_json_dict() | {"site": "Hauptwache", "x_ver": 2}).encode()
    assert decode(grown_json) == alarm


def test_values_the_old_decoder_let_through_are_rejected():
    alarm = real_events()[0]
    short = cbor2.loads(alarm.to_cbor())
    bad = {
        "severity 99": short | {"p": 99},
        "time inf": short | {"t": math.inf},
        "time nan": short | {"t": math.nan},
        "time as text": short | {"t": "1795653020382"},
        "time negative": short | {"t": -1},
        "time 2**53": short | {"t": 2**53},
        "kind True": short | {"k": True},
        "kind 99": short | {"k": 99},
        "id 15 bytes": short | {"i": bytes(15)},
        "seq negative": short | {"q": -1},
        "seq bool": short | {"q": True},
        "schema 0": short | {"v": 0},
        "source empty": short | {"s": ""},
        "source int": short | {"s": 7},
        "source too long": short | {"s": "x" * 1000},
        "gateway list": short | {"g": ["gw"]},
        "data list": short | {"d": [1]},
        "data int key": short | {"d": {1: 2}},
        "data datetime": short | {"d": {"t": cbor2.CBORTag(1, 0)}},
        "clock 0": short | {"c": 0},
    }
    for name, obj in bad.items():
        try:
            decode(cbor2.dumps(obj))
        except DecodeError:
            continue
        raise AssertionError(f"{name}: decoded")
    for severity in ("critical", "CRITICAL"):
        obj = alarm.to_json_dict() | {"severity": severity}
        assert decode(json.dumps(obj).encode()).severity is Severity.CRITICAL
    for obj in (alarm.to_json_dict() | {"severity": 3}, alarm.to_json_dict() | {"id": "0" * 31}):
        try:
            decode(json.dumps(obj).encode())
        except DecodeError:
            continue
        raise AssertionError(f"{obj}: decoded")
