import json
import subprocess
import sys

import cbor2
import pytest

from protocol.events import DecodeError, Event, Kind, Lane, Severity, decode


def fire_alarm(**kw):
    return Event(
        Kind.ALARM,
        "n07/smoke",
        {"cause": "smoke", "value": 82},
        gateway="d03-w112-fp007",
        seq=123456,
        **kw,
    )


def test_cbor_and_json_round_trip_equal():
    for event in (fire_alarm(), fire_alarm(clock_synced=False), fire_alarm(severity=Severity.INFO)):
        assert decode(event.to_cbor()) == event
        assert decode(event.to_json()) == event


def test_fire_alarm_fits_in_100_bytes_even_with_unsynchronised_clock():
    assert len(fire_alarm(clock_synced=True).to_cbor()) <= 100
    assert len(fire_alarm(clock_synced=False).to_cbor()) <= 100


def test_every_kind_has_a_lane_and_alarms_are_critical():
    assert fire_alarm().lane is Lane.CRITICAL
    assert Event(Kind.FAULT, "x").lane is Lane.CRITICAL
    assert Event(Kind.TELEMETRY, "x").lane is Lane.BULK
    assert Event(Kind.PERSON, "x").lane is Lane.EVENTS


def test_ids_are_unique_and_time_is_epoch_ms():
    a, b = fire_alarm(), fire_alarm()
    assert a.id != b.id and len(a.id) == 16
    assert 1.7e12 < a.time_ms < 4e12


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"[1,2]", cbor2.dumps([1]), cbor2.dumps({"zz": 1}), b'{"kind": "alarm"}'],
)
def test_garbage_is_a_decode_error(payload):
    with pytest.raises(DecodeError):
        decode(payload)


def test_decode_command_prints_json(tmp_path):
    path = tmp_path / "alarm.cbor"
    event = fire_alarm()
    path.write_bytes(event.to_cbor())
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "decode", str(path)], capture_output=True, check=True
    )
    obj = json.loads(out.stdout)
    assert obj["kind"] == "alarm" and obj["id"] == event.id_hex and obj["severity"] == "critical"
    piped = subprocess.run(
        [sys.executable, "-m", "edge.cli", "decode", "-"],
        input=event.to_json(),
        capture_output=True,
        check=True,
    )
    assert json.loads(piped.stdout) == obj
    bad = subprocess.run(
        [sys.executable, "-m", "edge.cli", "decode", "-"], input=b"\x00garbage", capture_output=True
    )
    assert bad.returncode == 1 and b"not a wardgate payload" in bad.stderr


def test_decode_any_turns_bytes_in_data_into_hex():
    from protocol.events import decode_any

    ref = fire_alarm().id
    person = Event(Kind.PERSON, "cam/gate", {"ev": "end", "ref": ref}, gateway="gw")
    assert decode_any(person.to_cbor())["data"]["ref"] == ref.hex()


# Encodings frozen byte for byte (issue 9 changed the decoder, not the encoder): a consumer's
# stored payloads and a gateway of any version stay interchangeable.
VECTORS = [
    (
        Event(
            Kind.ALARM,
            "n07/smoke",
            {"cause": "smoke", "value": 82},
            gateway="d03-w112-fp007",
            seq=123456,
            id=bytes(range(16)),
            time_ms=1795653020382,
            clock_synced=True,
        ),
        "a86164a265636175736565736d6f6b656576616c7565185261676e6430332d773131322d6670303037616950"
        "000102030405060708090a0b0c0d0e0f616b0161711a0001e2406173696e30372f736d6f6b6561741b000001"
        "a21542aade617601",
        b'{"schema":1,"id":"000102030405060708090a0b0c0d0e0f","time_ms":1795653020382,'
        b'"clock_synced":true,"kind":"alarm","severity":"critical","gateway":"d03-w112-fp007",'
        b'"source":"n07/smoke","seq":123456,"data":{"cause":"smoke","value":82}}',
    ),
    (
        Event(
            Kind.FAULT,
            "n07/heat",
            {"active": True, "code": "open"},
            gateway="gw",
            seq=0,
            id=bytes(range(16, 32)),
            time_ms=1795653020382,
            clock_synced=False,
            severity=Severity.CRITICAL,
        ),
        "aa6163f46164a264636f6465646f70656e66616374697665f56167626777616950101112131415161718191a"
        "1b1c1d1e1f616b026170036171006173686e30372f6865617461741b000001a21542aade617601",
        b'{"schema":1,"id":"101112131415161718191a1b1c1d1e1f","time_ms":1795653020382,'
        b'"clock_synced":false,"kind":"fault","severity":"critical","gateway":"gw",'
        b'"source":"n07/heat","seq":0,"data":{"active":true,"code":"open"}}',
    ),
    (
        Event(
            Kind.READING,
            "mb3/gas",
            {"value": 12.5, "unit": "%LEL"},
            gateway="gw",
            id=bytes(16),
            time_ms=1,
            clock_synced=True,
        ),
        "a76164a264756e697464254c454c6576616c7565f94a4061676267776169500000000000000000000000000000"
        "0000616b056173676d62332f676173617401617601",
        b'{"schema":1,"id":"00000000000000000000000000000000","time_ms":1,"clock_synced":true,'
        b'"kind":"reading","severity":"debug","gateway":"gw","source":"mb3/gas",'
        b'"data":{"value":12.5,"unit":"%LEL"}}',
    ),
]


@pytest.mark.parametrize("event, cbor_hex, json_bytes", VECTORS)
def test_encodings_are_byte_identical_to_the_vectors(event, cbor_hex, json_bytes):
    assert event.to_cbor().hex() == cbor_hex
    assert event.to_json() == json_bytes
    assert decode(bytes.fromhex(cbor_hex)) == event
    assert decode(json_bytes) == event


def test_an_event_the_decoder_would_refuse_cannot_be_built():
    """Encoder and decoder share the source/gateway rule: every event built can be decoded."""
    for source in ("", "x" * 257, "a\nb"):
        with pytest.raises(ValueError, match="event source"):
            Event(Kind.ALARM, source)
    with pytest.raises(ValueError, match="event gateway"):
        Event(Kind.ALARM, "n07/smoke", gateway="g\x00w")
