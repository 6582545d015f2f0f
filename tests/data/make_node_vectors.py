"""Writes tests/data/node_vectors.json: the node protocol's test vectors.

The CRC and COBS vectors are independent of this project (the CRC-32 check value from the
"Catalogue of parametrised CRC algorithms", the COBS examples from Cheshire & Baker's paper as
listed on Wikipedia's COBS article). The message frames were produced by this project's encoder
when protocol version 1 was fixed: from then on they pin the wire format, and both CPython and
MicroPython must reproduce them byte for byte. Regenerate only with a protocol version bump:

    .venv/bin/python tests/data/make_node_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol import node_protocol as np

OUT = Path(__file__).with_name("node_vectors.json")

COBS = [
    ("00", "0101"),
    ("0000", "010101"),
    ("001100", "01021101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
]

CRC = [("", 0), ("313233343536373839", 0xCBF43926)]

MESSAGES = [
    {
        "type": "hello",
        "node": 7,
        "seq": 0,
        "boot_id": 0x1234ABCD,
        "heartbeat_s": 5,
        "firmware": "wardgate-node 1.0.0",
        "sensors": [
            ["smoke", "smoke"],
            ["heat", "heat"],
            ["flame", "flame"],
            ["call_point", "mcp"],
        ],
    },
    {
        "type": "hello",
        "node": 1,
        "seq": 65535,
        "boot_id": 0,
        "heartbeat_s": 1,
        "firmware": "",
        "sensors": [],
    },
    {"type": "reading", "node": 7, "seq": 1, "values": [[0, 1250], [1, 2137]]},
    {"type": "reading", "node": 7, "seq": 2, "values": [[1, -1550]]},
    {
        "type": "alarm",
        "node": 7,
        "seq": 3,
        "sensor": 0,
        "cause": "smoke",
        "value": 8200,
        "name": "smoke",
    },
    {
        "type": "alarm",
        "node": 7,
        "seq": 4,
        "sensor": 1,
        "cause": "heat",
        "value": 5800,
        "name": "heat",
    },
    {
        "type": "alarm",
        "node": 7,
        "seq": 5,
        "sensor": 1,
        "cause": "heat_ror",
        "value": 1200,
        "name": "heat",
    },
    {
        "type": "alarm",
        "node": 7,
        "seq": 6,
        "sensor": 2,
        "cause": "flame",
        "value": 100,
        "name": "flame",
    },
    {
        "type": "alarm",
        "node": 0,
        "seq": 256,
        "sensor": 3,
        "cause": "call_point",
        "value": 100,
        "name": "mcp",
    },
    {
        "type": "fault",
        "node": 7,
        "seq": 7,
        "sensor": 1,
        "code": "open",
        "active": True,
        "value": -2147483648,
        "name": "heat",
    },
    {
        "type": "fault",
        "node": 7,
        "seq": 8,
        "sensor": 1,
        "code": "open",
        "active": False,
        "value": 2137,
        "name": "heat",
    },
    {
        "type": "fault",
        "node": 7,
        "seq": 9,
        "sensor": 255,
        "code": "internal",
        "active": True,
        "value": 0,
        "name": "",
    },
    {
        "type": "heartbeat",
        "node": 7,
        "seq": 10,
        "uptime_s": 86400,
        "alarms": 5,
        "faults": 0,
        "flags": 1,
        "crc_errors": 3,
    },
    {"type": "ack", "node": 7, "seq": 11, "acked": 3, "status": "ok"},
    {"type": "ack", "node": 7, "seq": 12, "acked": 40000, "status": "unknown_command"},
    {"type": "command", "node": 7, "seq": 0, "command": "reset"},
    {"type": "command", "node": 255, "seq": 1, "command": "silence"},
    {"type": "command", "node": 7, "seq": 2, "command": "hello"},
]


def frame_hex(obj: dict) -> str:
    return np.encode(np.message_from_dict(obj)).hex()


def body(mtype: int, payload: bytes, version: int = np.PROTOCOL_VERSION, crc_delta: int = 0):
    import struct

    raw = struct.pack("<BBBH", version, mtype, 7, 1) + payload
    return raw + struct.pack("<I", (np.crc32(raw) + crc_delta) & 0xFFFFFFFF)


def rejects() -> list[dict]:
    good = bytes.fromhex(frame_hex(MESSAGES[4]))[1:-1]  # the smoke alarm, without delimiters
    flipped = bytearray(good)
    flipped[3] ^= 0x10
    return [
        {"why": "one bit flipped", "frame_hex": bytes(flipped).hex(), "error": "crc"},
        {
            "why": "crc off by one",
            "frame_hex": np.cobs_encode(body(3, bytes(7), crc_delta=1)).hex(),
            "error": "crc",
        },
        {
            "why": "protocol version 2",
            "frame_hex": np.cobs_encode(body(5, bytes(15), 2)).hex(),
            "error": "version",
        },
        {
            "why": "unknown type 99",
            "frame_hex": np.cobs_encode(body(99, b"")).hex(),
            "error": "payload",
        },
        {
            "why": "alarm payload short",
            "frame_hex": np.cobs_encode(body(3, bytes(5))).hex(),
            "error": "payload",
        },
        {
            "why": "unknown alarm cause",
            "frame_hex": np.cobs_encode(body(3, b"\x00\x09" + bytes(5))).hex(),
            "error": "payload",
        },
        {
            "why": "too short",
            "frame_hex": np.cobs_encode(b"\x01\x03\x07").hex(),
            "error": "framing",
        },
        {"why": "COBS block past end", "frame_hex": "0511", "error": "framing"},
    ]


def streams() -> list[dict]:
    alarm = bytes.fromhex(frame_hex(MESSAGES[4]))
    beat = bytes.fromhex(frame_hex(MESSAGES[12]))
    corrupt = bytearray(alarm)
    corrupt[6] ^= 0x01
    return [
        {
            "why": "line noise before a frame is flushed by its leading delimiter",
            "stream_hex": (b"\xff\x13\x37garbage" + alarm).hex(),
            "messages": [MESSAGES[4]],
            "counters": {"frames": 1, "framing_errors": 1},
        },
        {
            "why": "a corrupted frame is counted and the next one still arrives",
            "stream_hex": (bytes(corrupt) + beat).hex(),
            "messages": [MESSAGES[12]],
            "counters": {"frames": 1, "crc_errors": 1},
        },
        {
            "why": "no delimiter for longer than a frame can be: dropped until the next zero",
            "stream_hex": (b"\x01" * (np.MAX_ENCODED + 10) + alarm + beat).hex(),
            "messages": [MESSAGES[4], MESSAGES[12]],
            "counters": {"frames": 2, "overruns": 1},
        },
        {
            "why": "back-to-back frames share delimiters",
            "stream_hex": (alarm[:-1] + beat + beat[1:]).hex(),
            "messages": [MESSAGES[4], MESSAGES[12], MESSAGES[12]],
            "counters": {"frames": 3},
        },
    ]


def main() -> None:
    vectors = {
        "protocol_version": np.PROTOCOL_VERSION,
        "provenance": "tests/data/make_node_vectors.py (CRC and COBS vectors are published ones)",
        "crc32": [{"data_hex": d, "crc": c} for d, c in CRC],
        "cobs": [{"data_hex": d, "encoded_hex": e} for d, e in COBS],
        "messages": [{"message": m, "frame_hex": frame_hex(m)} for m in MESSAGES],
        "rejects": rejects(),
        "streams": streams(),
    }
    OUT.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
