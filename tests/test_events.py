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
